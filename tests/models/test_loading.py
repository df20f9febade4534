import shutil

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.loading import load_causal_lm, load_tokenizer


def test_loads_model_and_tokenizer(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.pad_token_id is not None and model.config.vocab_size == len(tokenizer)
    assert load_causal_lm(tiny_model_dir, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_missing_directory_is_a_user_error(loader, tmp_path):
    with pytest.raises(RlhfkitError, match="does not exist"):
        loader(tmp_path / "nope")


@pytest.mark.parametrize("loader", [load_causal_lm, load_tokenizer])
def test_directory_without_config_is_a_user_error(loader, tmp_path):
    (tmp_path / "weights.bin").write_text("not a model")
    with pytest.raises(RlhfkitError, match="no config.json"):
        loader(tmp_path)


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "model")
    tokenizer = load_tokenizer(copy)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(copy)
    reloaded = load_tokenizer(copy)
    assert reloaded.pad_token_id == reloaded.eos_token_id is not None
