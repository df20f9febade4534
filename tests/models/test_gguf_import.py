"""A GGUF file stands for a model directory: converted once, cached by sha256, the same model."""

import hashlib
import json
import logging
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.gguf_import import (
    SOURCE_RECORD,
    cached_conversion,
    convert_gguf,
    default_cache_dir,
    import_gguf,
)
from rlhfkit.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
from rlhfkit.models.pretrained import backbone_parameters
from rlhfkit.models.reward import RewardModel
from rlhfkit.models.tiny import IM_END, IM_START

from .tiny_gguf import write_tiny_gguf

TEXTS = [
    f"{IM_START}user\nQ: Ann has 37 pens and buys 205 more.{IM_END}\n{IM_START}assistant\n",
    "User: How do I start running?\nAssistant: Start with short runs and walk breaks.",
    "  leading spaces, ünïcödé, tabs\tand 1234567890 digits<|endoftext|>",
]


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("gguf")
    return {
        kind: write_tiny_gguf(tiny_model_dir, out / f"tiny.{kind}.gguf", quantization=kind)
        for kind in ("F32", "Q8_0")
    }


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """RLHFKIT_CACHE pointed at a fresh directory; returns where conversions land."""
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def logits_of(model, tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


# Q8_0 keeps 8 bits per weight with one scale per 32: the logits of the tiny model (|logit| < 1)
# move by a few thousandths. F32 must come back bit for bit, give or take float rounding.
@pytest.mark.parametrize("kind, tolerance", [("F32", 1e-5), ("Q8_0", 1e-2)])
def test_round_trip_same_logits(gguf_files, cache, tiny_model_dir, kind, tolerance):
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    converted = load_causal_lm(gguf_files[kind])
    for text in TEXTS:
        before = logits_of(original, tokenizer, text)
        after = logits_of(converted, tokenizer, text)
        assert (before - after).abs().max().item() < tolerance
    if kind == "Q8_0":  # the file really held quantized weights, and they were dequantized
        assert not torch.equal(
            original.model.layers[0].mlp.up_proj.weight,
            converted.model.layers[0].mlp.up_proj.weight,
        )


def test_round_trip_same_tokenizer(gguf_files, cache, tiny_model_dir):
    original = load_tokenizer(tiny_model_dir)
    converted = load_tokenizer(gguf_files["F32"])
    for text in TEXTS:
        ids = original(text, add_special_tokens=False)["input_ids"]
        assert converted(text, add_special_tokens=False)["input_ids"] == ids
        assert converted.decode(ids) == original.decode(ids)
    assert converted.chat_template == original.chat_template
    assert (converted.eos_token, converted.pad_token) == (original.eos_token, original.pad_token)
    assert converted.bos_token is None and len(converted) == len(original)
    messages = [{"role": "user", "content": "Hi"}]
    assert converted.apply_chat_template(messages, add_generation_prompt=True) == (
        original.apply_chat_template(messages, add_generation_prompt=True)
    )


def test_converted_once_into_a_plain_directory(gguf_files, cache, caplog):
    caplog.set_level(logging.INFO, logger="rlhfkit")  # the conversion is announced at INFO
    path = gguf_files["Q8_0"]
    first = resolve_model_path(path)
    assert "converting" in caplog.text
    caplog.clear()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert first == cache / digest
    # plain transformers loads it: no quantizer, no gguf reader, float32 safetensors
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["bos_token_id"] is None  # the file names no BOS: no other token's id either
    model = AutoModelForCausalLM.from_pretrained(first)
    assert next(model.parameters()).dtype == torch.float32
    AutoTokenizer.from_pretrained(first)
    record = json.loads((first / SOURCE_RECORD).read_text())
    assert (record["sha256"], record["architecture"]) == (digest, "llama")
    # reused, not converted again: also under another name
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    renamed = shutil.copy(path, path.parent / "copy-of-tiny.gguf")
    assert resolve_model_path(path) == resolve_model_path(renamed) == first
    assert "converting" not in caplog.text
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in cache.iterdir()) == [digest]  # no leftovers beside it


def switch_transformers_bars(on: bool) -> None:
    if on:
        transformers_logging.enable_progress_bar()
    else:
        transformers_logging.disable_progress_bar()


@pytest.mark.parametrize("bars", [True, False])
def test_the_conversion_bar_follows_transformers_progress_bar_switch(
    gguf_files, tmp_path, capsys, bars
):
    # transformers draws it with tqdm itself: it showed on the command line and in rlhfkit.run,
    # which turn transformers' bars off
    before = transformers_logging.is_progress_bar_enabled()
    switch_transformers_bars(bars)
    try:
        convert_gguf(gguf_files["F32"], tmp_path / "m")
    finally:
        switch_transformers_bars(before)
    assert ("Converting and de-quantizing GGUF tensors" in capsys.readouterr().err) == bars


def test_reward_model_from_a_gguf_file(gguf_files, cache):
    model = RewardModel.from_pretrained(gguf_files["F32"], num_heads=2)
    ids = torch.tensor([[5, 6, 7]])
    assert model(ids, torch.ones_like(ids)).rewards.shape == (1, 2)


def test_import_into_a_chosen_directory(gguf_files, tmp_path, tiny_model_dir):
    out = import_gguf(gguf_files["F32"], tmp_path / "smol")
    assert (out / "model.safetensors").is_file() and (out / SOURCE_RECORD).is_file()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    imported = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[3, 9, 27, 81]])
    with torch.no_grad():
        assert torch.allclose(original(ids).logits, imported(ids).logits, atol=1e-5)
    with pytest.raises(RlhfkitError, match="not empty"):
        import_gguf(gguf_files["F32"], out)


def test_failed_conversion_leaves_nothing(gguf_files, tiny_model_dir, tmp_path):
    # the weights convert, the tokenizer does not: no directory under the final name, no
    # temporary one beside it
    bad = write_tiny_gguf(tiny_model_dir, tmp_path / "odd.gguf", tokenizer_model="no-such-bpe")
    cache_dir = tmp_path / "cache"
    with pytest.raises(RlhfkitError, match=r"odd\.gguf: it cannot be converted"):
        cached_conversion(bad, cache_dir)
    assert list(cache_dir.iterdir()) == []


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d, tmp: tmp / "missing.gguf", "no such file"),
        (lambda d, tmp: _mkdir(tmp / "folder.gguf"), "not a file"),
        (lambda d, tmp: _write(tmp / "weights.gguf", b"PK\x03\x04 a zip"), "not a GGUF file"),
        (lambda d, tmp: _write(tmp / "cut.gguf", b"GGUF\x03\x00\x00\x00\x10"), "truncated"),
        (lambda d, tmp: _cut(write_tiny_gguf(d, tmp / "half.gguf"), 0.8), "tensors end at"),
        (
            lambda d, tmp: write_tiny_gguf(d, tmp / "bert.gguf", architecture="nosuchformer"),
            "architecture 'nosuchformer' cannot be read",
        ),
        (
            lambda d, tmp: write_tiny_gguf(d, tmp / "t5.gguf", architecture="t5"),
            "a 't5' model is not a causal language model",
        ),
    ],
    ids=[
        "missing",
        "directory",
        "not-gguf",
        "truncated",
        "cut-in-the-weights",
        "unsupported-architecture",
        "t5",
    ],
)
def test_bad_files_are_one_line_errors(tiny_model_dir, tmp_path, cache, make, fragment):
    path = make(tiny_model_dir, tmp_path)
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(RlhfkitError) as caught:
            load(path)
        message = str(caught.value)
        assert "\n" not in message and fragment in message and "GGUF file" in message


def _mkdir(path):
    path.mkdir()
    return path


def _cut(path, fraction: float):
    """The file cut short inside its weights: its metadata still reads."""
    data = path.read_bytes()
    return _write(path, data[: int(len(data) * fraction)])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_default_cache_dir():
    assert default_cache_dir({"RLHFKIT_CACHE": "/c"}).as_posix() == "/c/gguf"
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}).as_posix() == "/x/rlhfkit/gguf"
    assert default_cache_dir({}).parts[-3:] == (".cache", "rlhfkit", "gguf")


def test_the_size_of_a_gguf_model_is_read_without_converting_it(gguf_files, cache, tiny_model_dir):
    # the learning-rate guard sizes the model before a first run converts anything: a refused
    # rate took a full conversion (17 s and 538 MB for SmolLM2-135M) before
    assert backbone_parameters(gguf_files["F32"]) == backbone_parameters(tiny_model_dir)
    assert not cache.exists()
