import json
import shutil
import warnings

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.lora import add_lora, load_lora


def test_adding_and_loading_adapters_raise_no_warning_a_user_cannot_act_on(
    tiny_model_dir, tmp_path
):
    with warnings.catch_warnings():
        warnings.simplefilter(
            "error", FutureWarning
        )  # peft reads an attribute transformers renamed
        model = add_lora(load_causal_lm(tiny_model_dir), r=4, alpha=8)
        model.save_pretrained(tmp_path / "adapters")
        loaded = load_lora(load_causal_lm(tiny_model_dir), tmp_path / "adapters")
    assert any(p.requires_grad for p in loaded.parameters())


def test_saved_adapters_name_their_base_by_an_absolute_path(tiny_model_dir, tmp_path, monkeypatch):
    shutil.copytree(tiny_model_dir, tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    add_lora(load_causal_lm("base"), r=4, alpha=8).save_pretrained(tmp_path / "adapters")
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    # loadable with AutoPeftModelForCausalLM from any working directory
    assert config["base_model_name_or_path"] == str(tmp_path / "base")
