"""The learning-rate guard: refuses a rate far too large for a pretrained model, and only then."""

import json

import pytest
from transformers import AutoModelForCausalLM

from rlhfkit.errors import RlhfkitError
from rlhfkit.models.pretrained import backbone_parameters, check_learning_rate, lr_limit


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
        check_learning_rate(smollm2_config_dir, lr, lora_r=lora_r)
        return
    with pytest.raises(RlhfkitError) as caught:
        check_learning_rate(smollm2_config_dir, lr, lora_r=lora_r)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in (f"lr={lr:g}", "135M parameters", "--force-lr", "docs/pretrained-models.md"):
        assert fragment in message


def test_tiny_model_takes_any_rate(tiny_model_dir):
    check_learning_rate(tiny_model_dir, 1.0, lora_r=0)


def test_reads_the_config_of_a_reward_model(tmp_path, smollm2_config_dir):
    config = json.loads((smollm2_config_dir / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlhfkitError, match="far too large"):
        check_learning_rate(tmp_path, 1e-3, lora_r=0)


def test_an_unreadable_model_is_left_to_the_trainer(tmp_path):
    check_learning_rate(tmp_path / "missing", 1e-3, lora_r=0)  # the trainer will name the fault
