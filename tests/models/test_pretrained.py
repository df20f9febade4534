"""The learning-rate guard: refuses a rate far too large for a pretrained model, and only then."""

import json

import pytest
from transformers import AutoModelForCausalLM

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.pretrained import backbone_parameters, check_learning_rates, lr_limit


def test_counts_parameters_from_the_config(tiny_model_dir, smollm2_config_dir):
    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # tied embeddings: the head adds no parameters to the backbone's
    assert backbone_parameters(tiny_model_dir) == sum(p.numel() for p in loaded.parameters())
    assert backbone_parameters(smollm2_config_dir) == 134_515_008


def test_limits_by_size_and_method():
    assert lr_limit(900_000, lora=False) is None  # trained from scratch: any rate
    assert lr_limit(50_000_000, lora=False) is None
    assert lr_limit(135_000_000, lora=False) == 5e-5
    assert lr_limit(135_000_000, lora=True) == 1e-3
    assert lr_limit(7_000_000_000, lora=False) == 2e-5
    assert lr_limit(7_000_000_000, lora=True) == 5e-4


@pytest.mark.parametrize(
    "lr, lora_r, refused",
    [(1e-3, 0, True), (1e-4, 0, True), (5e-5, 0, False), (1e-5, 0, False)]
    + [(2e-3, 8, True), (1e-3, 8, False), (1e-4, 8, False)],
)
def test_pretrained_model(smollm2_config_dir, lr, lora_r, refused):
    if not refused:
        check_learning_rates(smollm2_config_dir, {"lr": (lr, lora_r)})
        return
    with pytest.raises(RlhfkitError) as caught:
        check_learning_rates(smollm2_config_dir, {"lr": (lr, lora_r)})
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (
        f"lr={lr:g} is far too large",
        "135M parameters",
        "--force-lr",
        "force_lr=true",
        "docs/pretrained-models.md",
    ):
        assert fragment in message
    check_learning_rates(smollm2_config_dir, {"lr": (lr, lora_r)}, force=True)


def test_the_error_names_the_key_that_is_too_large(smollm2_config_dir):
    rates = {"ppo.lr": (1e-5, 0), "ppo.critic_lr": (1e-4, 0)}
    with pytest.raises(RlhfkitError, match=r"^ppo\.critic_lr=0\.0001 is far too large"):
        check_learning_rates(smollm2_config_dir, rates)


def test_tiny_model_takes_any_rate(tiny_model_dir):
    check_learning_rates(tiny_model_dir, {"lr": (1.0, 0), "critic_lr": (1.0, 0)})


def test_no_model_is_not_checked():
    check_learning_rates("", {"lr": (1.0, 0)})  # a job's tiny default, built later


def test_reads_the_config_of_a_reward_model(tmp_path, smollm2_config_dir):
    config = json.loads((smollm2_config_dir / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlhfkitError, match="far too large"):
        check_learning_rates(tmp_path, {"lr": (1e-3, 0)})


def test_an_unreadable_model_is_left_to_the_trainer(tmp_path):
    check_learning_rates(tmp_path / "missing", {"lr": (1e-3, 0)})  # the trainer names the fault


def test_a_missing_gguf_file_is_left_to_the_trainer(tmp_path):
    # was: FileNotFoundError from hashing the file, a traceback instead of the trainer's error
    check_learning_rates(tmp_path / "missing.gguf", {"lr": (1e-3, 0)})


def test_a_converted_gguf_file_is_sized_from_its_converted_config(
    tiny_model_dir, tmp_path, monkeypatch
):
    # reading a GGUF file's metadata takes seconds; once a run has converted it, its
    # config.json answers at once
    import hashlib
    import shutil

    from rlhfkit.models import pretrained

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF stand-in bytes")
    cache = tmp_path / "cache"
    converted = cache / "gguf" / hashlib.sha256(gguf.read_bytes()).hexdigest()
    converted.mkdir(parents=True)
    shutil.copy(tiny_model_dir / "config.json", converted / "config.json")
    monkeypatch.setenv("RLHFKIT_CACHE", str(cache))

    def unread(path):
        raise AssertionError("the metadata was read")

    monkeypatch.setattr(pretrained, "gguf_config", unread)
    assert backbone_parameters(gguf) == backbone_parameters(tiny_model_dir)
