"""LoRA in every policy trainer: `train.policy_models` puts adapters on the policy and
`train.checkpointing.final_policy` merges them for final/. A short run trains the adapters
alone (the base weights under them stay the starting model's), the reference is the base with
the adapters off, and final/ is a plain model: the base with the trained adapters merged in."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.errors import ConfigError
from rlhfkit.models.lora import merged_copy
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train import policy_run
from rlhfkit.train.grpo import train_grpo
from rlhfkit.train.online_dpo import train_online_dpo
from rlhfkit.train.ppo import train_ppo
from rlhfkit.train.raft import train_raft
from rlhfkit.train.rloo import train_rloo

from . import test_grpo, test_online_dpo, test_ppo, test_raft, test_rloo

LORA = dict(lora_r=4, lora_alpha=8, max_steps=2, eval_every=-1)
# each trainer's own test settings, cut to one update per step; all but RAFT hold a reference
TRAINERS = {
    "ppo": (
        train_ppo,
        test_ppo.config,
        dict(prompts_per_step=4, mini_batch_size=4, ppo_epochs=1),
    ),
    "grpo": (train_grpo, test_grpo.config, dict(mini_batch_size=16, beta=0.1)),
    "rloo": (train_rloo, test_rloo.config, dict(mini_batch_size=16, beta=0.1)),
    "raft": (train_raft, test_raft.config, dict(epochs_per_round=1)),
    "online-dpo": (train_online_dpo, test_online_dpo.config, dict()),
}


def built_policies(monkeypatch) -> list[torch.nn.Module]:
    """Every policy `PolicyRun` builds from here on, as it trains (the live LoRA model)."""
    policies = []
    build = policy_run.build_policy_models

    def recording(*args, **kwargs):
        models = build(*args, **kwargs)
        policies.append(models.policy)
        return models

    monkeypatch.setattr(policy_run, "build_policy_models", recording)
    return policies


def base_name(lora_name: str) -> str:
    """A peft parameter's name in the plain model it wraps."""
    return lora_name.removeprefix("base_model.model.").replace(".base_layer", "")


def assert_only_adapters_trained_and_merged(start_dir: Path, policy, final_dir: Path) -> None:
    """`policy` (a trained LoRA model) trained its adapters alone on the weights of `start_dir`,
    and `final_dir` holds a plain model: those weights with the adapters merged in."""
    start = load_file(start_dir / "model.safetensors")
    named = dict(policy.named_parameters())
    trainable = [name for name, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    base = {base_name(name): p for name, p in named.items() if "lora_" not in name}
    assert start.keys() <= base.keys()
    for key, weight in start.items():
        assert torch.equal(base[key].detach().cpu(), weight), key
    final = load_file(final_dir / "model.safetensors")
    assert final.keys() == start.keys()  # no adapter keys: a plain model
    merged = merged_copy(policy).state_dict()
    for key, weight in final.items():
        assert torch.allclose(weight, merged[key].cpu(), atol=1e-6), key
    moved = [key for key in start if not torch.equal(final[key], start[key])]
    # the adapters sit on the linear layers: those moved, the norms and embeddings did not
    assert moved and all("proj" in key for key in moved)
    _, info = AutoModelForCausalLM.from_pretrained(final_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize("name", list(TRAINERS))
def test_lora_trains_only_the_adapters_and_saves_a_merged_model(
    name, tiny_model_dir, tmp_path, monkeypatch
):
    train, config, settings = TRAINERS[name]
    policies = built_policies(monkeypatch)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    history = train(config(tiny_model_dir, tmp_path, **settings, **LORA), run).history
    assert len(history) == 2 and len(policies) == 1
    if name != "raft":
        # the reference is the base with the adapters off: the same as the policy before the
        # first update, apart from it after
        assert abs(history[0]["kl_per_sequence"]) < 1e-4
        assert abs(history[1]["kl_per_sequence"]) > 1e-3
    assert_only_adapters_trained_and_merged(tiny_model_dir, policies[0], run.final)


@pytest.fixture
def dropout_model_dir(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with attention dropout 0.5 in its config (GPT-2's rate is 0.1)."""
    import json
    import shutil

    model_dir = tmp_path / "dropout_model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    return model_dir


@pytest.mark.parametrize("disable_dropout", [True, False])
def test_the_policy_trains_without_dropout_so_its_first_ratio_is_one(
    dropout_model_dir, tmp_path, disable_dropout
):
    # the first update's log-probs are the sampler's (ratio 1) only with dropout off
    cfg = test_grpo.config(
        dropout_model_dir, tmp_path, max_steps=1, disable_dropout=disable_dropout
    )
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    gap = train_grpo(cfg, run).history[0]["sampler_logprob_gap"]
    assert gap < 1e-5 if disable_dropout else gap > 1e-3
    final = AutoModelForCausalLM.from_pretrained(run.final)
    assert final.config.attention_dropout == 0.5  # the model's own rate is saved


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory, tiny_sizes) -> Path:
    """A tiny model whose tokenizer is trained on other text than the policy's."""
    from rlhfkit.models.tiny import build_tiny_model

    corpus = [f"zebra {i} quartz {i * 7} jumps over the lazy yak" for i in range(200)]
    sizes = {**tiny_sizes, "vocab_size": 400}  # ids past the policy's own table too
    return build_tiny_model(tmp_path_factory.mktemp("other_tokenizer"), corpus, seed=1, **sizes)


def test_a_reference_with_another_tokenizer_is_refused_before_training(
    tiny_model_dir, other_tokenizer_dir, tmp_path
):
    cfg = test_grpo.config(
        tiny_model_dir, tmp_path, reference_model=str(other_tokenizer_dir), beta=0.1, max_steps=1
    )
    with pytest.raises(ConfigError, match="reference_model=.*tokenizer is not the policy's"):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    assert not (tmp_path / "run" / "final").exists()


def test_a_critic_started_from_a_model_with_another_tokenizer_is_refused(
    tiny_model_dir, other_tokenizer_dir, tmp_path
):
    cfg = test_ppo.config(
        tiny_model_dir,
        tmp_path,
        reward_model=str(other_tokenizer_dir),
        critic_init="reward_model",
        max_steps=1,
    )
    with pytest.raises(ConfigError, match="reward_model=.*critic_init=policy"):
        train_ppo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    # as a reward source alone (critic_init=policy) its own tokenizer reads the text: allowed
    cfg = test_ppo.config(
        tiny_model_dir,
        tmp_path,
        reward_model=str(other_tokenizer_dir),
        critic_init="policy",
        prompts_per_step=4,
        mini_batch_size=4,
        ppo_epochs=1,
        max_steps=1,
    )
    train_ppo(cfg, prepare_run_dir(tmp_path / "run2", resume=False, overwrite=False))
