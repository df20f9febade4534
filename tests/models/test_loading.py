"""Loading a model directory as it was saved, and every fault of one as a one-line error."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.loading import disable_dropout, load_causal_lm, load_tokenizer


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


def truncate_weights(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def replace_weights_with_pickle(model_dir):
    # a pickle that creates a file when loaded: the loader must refuse it without unpickling
    marker = model_dir / "unpickled"

    class RunsCode:
        def __reduce__(self):
            return open, (str(marker), "w")

    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(RunsCode()))


def drop_one_tensor(model_dir):
    tensors = load_file(model_dir / "model.safetensors")
    del tensors["model.layers.0.mlp.up_proj.weight"]
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})


def edit_config(**changes):
    def edit(model_dir):
        config = json.loads((model_dir / "config.json").read_text())
        config.update(changes)
        (model_dir / "config.json").write_text(json.dumps(config))

    return edit


def save_bert_for_masked_lm(model_dir):
    for name in ("config.json", "model.safetensors"):
        (model_dir / name).unlink()
    config = BertConfig(vocab_size=300, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertForMaskedLM(config).save_pretrained(model_dir)


def save_reward_model(model_dir):
    scorer = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    scorer.save_pretrained(model_dir)


BROKEN_MODELS = {
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), "no weights (model.safetensors)"),
    "config-not-json": (
        lambda d: (d / "config.json").write_text('{"model_type": "llama",'),
        "config.json is not valid JSON (Expecting property name",
    ),
    "config-a-list": (
        lambda d: (d / "config.json").write_text("[1, 2]"),
        "config.json holds a list, not a mapping",
    ),
    "no-model-type": (edit_config(model_type=None), "config.json names no model_type"),
    "unknown-model-type": (edit_config(model_type="llamma"), "model type 'llamma' is unknown"),
    "t5-config": (edit_config(model_type="t5"), "a 't5' model is not a causal language model"),
    "bert": (save_bert_for_masked_lm, "holds a BertForMaskedLM, not a causal language model"),
    "reward-model": (save_reward_model, "holds a LlamaForSequenceClassification, not a causal"),
    "truncated-weights": (truncate_weights, "the weights are damaged or truncated"),
    "pickle-weights": (replace_weights_with_pickle, "pytorch_model.bin, a pickle file; only"),
    "missing-tensor": (drop_one_tensor, "lack 1 of the model's tensors (first: model.layers.0"),
    "wrong-shapes": (edit_config(intermediate_size=128), "do not have the shape config.json"),
}


@pytest.mark.parametrize("name", list(BROKEN_MODELS))
def test_a_broken_model_directory_is_one_line_naming_it_and_the_fault(
    name, tiny_model_dir, tmp_path
):
    breaks, fault = BROKEN_MODELS[name]
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    breaks(model_dir)
    with pytest.raises(RlhfkitError) as caught:
        load_causal_lm(model_dir)
    message = str(caught.value)
    assert message.startswith(f"model directory {model_dir}: ") and fault in message
    assert len(message.splitlines()) == 1
    assert not (model_dir / "unpickled").exists()


BROKEN_TOKENIZERS = {
    "no-tokenizer": (
        ("tokenizer.json", "tokenizer_config.json"),
        None,
        "no tokenizer (tokenizer.json or tokenizer_config.json)",
    ),
    "tokenizer-not-json": ((), "{not json", "the tokenizer cannot be loaded (JSONDecodeError"),
    "tokenizer-wrong-json": ((), '{"a": 1}', "the tokenizer cannot be loaded (KeyError"),
}


@pytest.mark.parametrize("name", list(BROKEN_TOKENIZERS))
def test_a_missing_or_broken_tokenizer_is_one_line_naming_the_directory(
    name, tiny_model_dir, tmp_path
):
    removed, tokenizer_json, fault = BROKEN_TOKENIZERS[name]
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    for file_name in removed:
        (model_dir / file_name).unlink()
    if tokenizer_json is not None:
        (model_dir / "tokenizer.json").write_text(tokenizer_json)
    with pytest.raises(RlhfkitError) as caught:
        load_tokenizer(model_dir)
    message = str(caught.value)
    assert message.startswith(f"model directory {model_dir}: ") and fault in message
    assert len(message.splitlines()) == 1


def test_a_broken_config_is_named_by_the_tokenizer_loader_too(tiny_model_dir, tmp_path):
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    (model_dir / "config.json").write_text("{")
    with pytest.raises(RlhfkitError, match="config.json is not valid JSON"):
        load_tokenizer(model_dir)


def dropout_models() -> dict[str, torch.nn.Module]:
    """Models whose outputs dropout changes in train mode: GPT-2 (dropout layers), Llama (the
    float rate its attention passes to the kernel), LoRA (dropout on the adapters' input)."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    )
    sizes = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2)
    llama = LlamaForCausalLM(LlamaConfig(**sizes, num_attention_heads=2, attention_dropout=0.5))
    lora_base = LlamaForCausalLM(LlamaConfig(**sizes, num_attention_heads=2))
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules="all-linear")
    lora = get_peft_model(lora_base, config)
    for module in lora.modules():  # adapters that act (peft starts B at 0)
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    return {"gpt2": gpt2, "llama": llama, "lora": lora}


@pytest.mark.parametrize("name", ["gpt2", "llama", "lora"])
def test_disable_dropout_makes_the_train_mode_forward_the_eval_mode_one(name):
    model = dropout_models()[name]
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))

    def logits(train: bool) -> torch.Tensor:
        torch.manual_seed(2)
        with torch.no_grad():
            return model.train(train)(input_ids=ids).logits

    assert not torch.allclose(logits(True), logits(False), atol=1e-4)  # dropout acts
    rates = model.config.to_dict()
    assert disable_dropout(model.train()) is model
    assert model.training  # left in train mode (gradient checkpointing needs it)
    assert torch.allclose(logits(True), logits(False), atol=1e-6)
    assert model.config.to_dict() == rates  # a saved checkpoint keeps the model's own rates
