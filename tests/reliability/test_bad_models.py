"""Broken model directories: each is refused with one line naming the directory and its fault,
before any training (the catalogue's promise: harness.py)."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.harness import QUIET, Case, Env, Invocation, check_case, params


def sft_with(model: Path, env: Env, *expect: str) -> Invocation:
    argv = ["sft", f"model={model}", f"train_data={env.good_sft()}", *QUIET, *env.flags()]
    return Invocation(argv, (str(model), *expect))


def broken(change: Callable[[Path], None], *expect: str):
    """A case builder: a copy of the tiny model changed by `change`, trained on with sft."""

    def build(env: Env) -> Invocation:
        model = env.model_copy()
        change(model)
        return sft_with(model, env, *expect)

    return build


def edit_config(**settings):
    """A change: config.json with `settings` set (a None value removes the key)."""

    def change(model: Path) -> None:
        config = json.loads((model / "config.json").read_text())
        config.update(settings)
        config = {key: value for key, value in config.items() if value is not None}
        (model / "config.json").write_text(json.dumps(config))

    return change


def write(name: str, content: bytes):
    return lambda model: (model / name).write_bytes(content)


def remove(*names: str):
    def change(model: Path) -> None:
        for name in names:
            (model / name).unlink()

    return change


def truncate_weights(model: Path) -> None:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def weights_as_pickle(model: Path) -> None:
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


CASES = [
    Case(
        "model-directory-missing",
        lambda env: sft_with(env.root / "no_model", env, "does not exist"),
    ),
    Case(
        "model-path-is-a-file",
        lambda env: sft_with(env.file("model.txt", "weights"), env, "is a file, not a model"),
    ),
    Case("no-config-json", broken(remove("config.json"), "no config.json")),
    Case("config-json-broken", broken(write("config.json", b'{"model_type": '), "not valid JSON")),
    Case("config-json-a-list", broken(write("config.json", b"[1, 2]"), "not a mapping")),
    Case("config-json-not-utf8", broken(write("config.json", b'{"a": "\xff"}'), "not UTF-8")),
    Case("no-model-type", broken(edit_config(model_type=None), "names no model_type")),
    Case(
        "unknown-model-type",
        broken(edit_config(model_type="llama9000"), "'llama9000'", "unknown to transformers"),
    ),
    Case(
        "not-a-causal-lm-type",
        broken(
            edit_config(model_type="t5", architectures=None), "'t5'", "not a causal language model"
        ),
    ),
    Case(
        "config-of-another-model-than-the-weights",
        broken(edit_config(model_type="bert"), "the weights lack", "bert."),
    ),
    Case(
        "saved-as-a-classifier",
        broken(
            edit_config(architectures=["LlamaForSequenceClassification"]),
            "LlamaForSequenceClassification",
            "not a causal language model",
        ),
    ),
    Case(
        "config-value-wrong-type",
        broken(edit_config(num_hidden_layers="two"), "config.json", "num_hidden_layers"),
    ),
    Case("no-weights", broken(remove("model.safetensors"), "no weights")),
    Case("pickle-weights", broken(weights_as_pickle, "pytorch_model.bin", "pickle")),
    Case("truncated-weights", broken(truncate_weights, "damaged or truncated")),
    Case(
        "garbage-weights",
        broken(write("model.safetensors", bytes(range(256)) * 8), "damaged or truncated"),
    ),
    Case(
        "weights-of-another-shape",
        broken(edit_config(intermediate_size=128), "do not have the shape", "mlp"),
    ),
    Case(
        "weights-lacking-a-layer",
        broken(edit_config(num_hidden_layers=3), "lack", "layers.2"),
    ),
    Case(
        "no-tokenizer",
        broken(remove("tokenizer.json", "tokenizer_config.json"), "no tokenizer"),
    ),
    Case(
        "broken-tokenizer",
        broken(write("tokenizer.json", b'{"version": "1.0", "model": 3}'), "tokenizer"),
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_model_directory(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
