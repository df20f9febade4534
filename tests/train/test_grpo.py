import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.errors import ConfigError, NumericalFault
from rlhfkit.models.reward import RewardModel
from rlhfkit.objectives.group_advantages import group_advantages
from rlhfkit.rollout.engine import Rollout
from rlhfkit.rollout.forward import response_logprobs
from rlhfkit.rollout.text import decode_responses
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.config_checks import check_trainer_config
from rlhfkit.train.grpo import (
    GRPOConfig,
    check_batch_sizes,
    check_kl_settings,
    check_norm_settings,
    step_rewards_on_tokens,
    train_grpo,
)
from rlhfkit.train.policy_run import PolicyRun
from rlhfkit.train.raft import train_raft
from rlhfkit.train.rloo import RLOOConfig
from tests.train import test_raft
from tests.train.conftest import length_reward_spec


def config(model, tmp_path, **overrides) -> GRPOConfig:
    settings = dict(
        model=str(model),
        task="arith",
        reward=length_reward_spec(tmp_path),
        train_prompts=64,
        eval_prompts=8,
        prompts_per_step=4,
        group_size=4,
        mini_batch_size=8,
        max_new_tokens=12,
        eval_max_new_tokens=8,
        max_steps=12,
        lr=2e-2,
        warmup_steps=1,
        beta=0.0,
        eval_every=100,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return GRPOConfig(**{**settings, **overrides})


def test_grpo_climbs_the_reward_and_saves_a_loadable_policy(tiny_model_dir, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    result = train_grpo(config(tiny_model_dir, tmp_path), run)
    rewards = [row["reward_mean"] for row in result.history]
    assert len(rewards) == 12
    assert sum(rewards[-3:]) / 3 > 1.2 * sum(rewards[:3]) / 3
    lines = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    # step 0: the starting policy's evaluation alone, where the curves start
    assert [row["step"] for row in lines] == list(range(0, 13))
    assert set(lines[0]) - {"stage", "step", "time"} == {
        "eval_accuracy",
        "eval_step_accuracy",
        "eval_gold_score",
    }
    assert lines[0]["eval_accuracy"] == result.evals[0][1]["accuracy"]
    metrics = lines[1:]
    for key in (
        "reward_mean",
        "reward_std",
        "gold_score",
        "clip_fraction",
        "entropy",
        "response_length",
        "tokens_per_s",
        "time_generation",
        "time_reward",
        "time_forward_backward",
        "time_optimizer",
    ):
        assert key in metrics[0], key
    assert [step for step, _ in result.evals] == [0, 12] and "accuracy" in result.evals[-1][1]
    # the result's rows are metrics.jsonl's after step 0, the last with its evaluation
    assert [{k: v for k, v in row.items() if k not in ("stage", "time")} for row in metrics] == (
        result.history
    )
    assert result.history[-1]["eval_accuracy"] == result.evals[-1][1]["accuracy"]
    AutoModelForCausalLM.from_pretrained(run.final)


def kl_to_model(model_dir, reference_dir, texts) -> float:
    """Exact KL(model || reference) over the vocabulary, averaged over the tokens of `texts`."""
    tokenizer = AutoTokenizer.from_pretrained(reference_dir)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        log_p = AutoModelForCausalLM.from_pretrained(model_dir)(**enc).logits.log_softmax(-1)
        log_q = AutoModelForCausalLM.from_pretrained(reference_dir)(**enc).logits.log_softmax(-1)
    per_token = (log_p.exp() * (log_p - log_q)).sum(-1)
    return ((per_token * enc["attention_mask"]).sum() / enc["attention_mask"].sum()).item()


def test_kl_term_keeps_the_policy_nearer_the_reference(tiny_model_dir, tmp_path):
    free = train_grpo(
        config(tiny_model_dir, tmp_path, max_steps=6),
        prepare_run_dir(tmp_path / "a", resume=False, overwrite=False),
    )
    held = train_grpo(
        config(tiny_model_dir, tmp_path, max_steps=6, beta=1.0),
        prepare_run_dir(tmp_path / "b", resume=False, overwrite=False),
    )
    assert "kl_per_token" in held.history[-1] and "kl_per_token" not in free.history[-1]
    assert held.history[-1]["kl_per_token"] >= 0 and held.history[-1]["kl_per_sequence"] >= 0
    # measured as the exact KL on fixed texts (not as a weight distance, which Adam's per-weight
    # step sizes make nearly the same for both runs): 3-4x lower with the KL term
    texts = [e.prompt + e.completion for e in ArithTask().sft_examples(16, random.Random(5))]
    free_kl = kl_to_model(tmp_path / "a" / "final", tiny_model_dir, texts)
    held_kl = kl_to_model(tmp_path / "b" / "final", tiny_model_dir, texts)
    assert held_kl < 0.5 * free_kl


def test_process_supervision_runs_on_arith_step_rewards(tiny_model_dir, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    settings = dict(reward="process", supervision="process", max_steps=2, warmup_steps=4)
    result = train_grpo(config(tiny_model_dir, tmp_path, **settings), run)
    assert len(result.history) == 2 and all(
        torch.isfinite(torch.tensor(r["loss"])) for r in result.history
    )
    # the learning rate of each step is logged: the first two steps of the linear warm-up
    ramp = [config(tiny_model_dir, tmp_path).lr * step / 4 for step in (1, 2)]
    assert [r["step"] for r in result.history] == [1, 2]
    assert [r["lr"] for r in result.history] == pytest.approx(ramp)


def test_process_supervision_without_step_rewards_is_an_error_not_outcome_supervision(
    tiny_model_dir, tmp_path
):
    cfg = config(tiny_model_dir, tmp_path, supervision="process", reward="task", max_steps=1)
    with pytest.raises(ConfigError, match="supervision=process needs step rewards.*reward=process"):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))


@pytest.mark.parametrize("reward", ["task", "model:runs/rm/final", "LENGTH", ""])
def test_a_reward_without_step_rewards_is_refused_with_process_supervision_before_loading(
    tmp_path, reward
):
    # no model exists at "m": the check is made from the config alone, as --print-config makes
    # it, not after the models, the prompts and the starting evaluation
    reward = length_reward_spec(tmp_path) if reward == "LENGTH" else reward
    cfg = config("m", tmp_path, supervision="process", reward=reward)
    with pytest.raises(ConfigError, match="supervision=process needs step rewards"):
        check_trainer_config(cfg)
    check_trainer_config(config("m", tmp_path, supervision="process", reward="process"))


def test_batch_sizes_that_cannot_form_whole_groups_are_rejected_with_what_to_change(tmp_path):
    with pytest.raises(
        ConfigError, match=r"mini_batch_size=7 .* 4 \* 4 = 16 .*prompts_per_step / group_size"
    ):
        check_batch_sizes(config("m", tmp_path, mini_batch_size=7))
    with pytest.raises(ConfigError, match="group_size=1"):
        check_batch_sizes(config("m", tmp_path, group_size=1))


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, lora_r=4, lora_alpha=8, beta=0.1)
    run_dir = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    run = PolicyRun(cfg, run_dir, resume=False, needs_reference=True, stage="grpo")
    assert run.models.reference is None  # no second copy of the model
    trainable = [p for p in run.models.policy.parameters() if p.requires_grad]
    assert trainable and all(p.numel() < 2000 for p in trainable)  # adapters only
    with torch.no_grad():
        for p in trainable:
            p.add_(0.05 * torch.randn_like(p))  # move the adapters away from their identity init
    ids = torch.randint(5, 200, (2, 10), device=run.models.device)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "response_mask": torch.ones(2, 4, dtype=torch.bool, device=run.models.device),
    }
    reference = run.reference_logprobs(batch, 1.0, cfg.precision)
    assert not reference.is_inference()  # run in inference mode, but usable by a loss
    reference = reference.cpu()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        expected = response_logprobs(base, ids.cpu(), batch["attention_mask"].cpu(), 4).logprobs
        adapted = response_logprobs(run.models.policy, ids, batch["attention_mask"], 4).logprobs
    adapted = adapted.cpu()
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-3)


def test_reference_model_names_another_reference_and_is_refused_with_lora(tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)  # a model that differs from the policy's start
    model.save_pretrained(other)
    cfg = config(tiny_model_dir, tmp_path, beta=0.1, reference_model=str(other))
    run = PolicyRun(
        cfg,
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False),
        resume=False,
        needs_reference=True,
        stage="grpo",
    )
    assert torch.equal(run.models.reference.model.norm.weight.cpu(), model.model.norm.weight)
    assert not torch.equal(run.models.policy.model.norm.weight.cpu(), model.model.norm.weight)
    with pytest.raises(ConfigError, match="under LoRA"):
        PolicyRun(
            config(tiny_model_dir, tmp_path, beta=0.1, lora_r=4, reference_model=str(other)),
            prepare_run_dir(tmp_path / "lora", resume=False, overwrite=False),
            resume=False,
            needs_reference=True,
            stage="grpo",
        )


@pytest.mark.parametrize("trainer", ["grpo", "raft"])
def test_a_reference_model_that_would_not_be_loaded_is_refused(tiny_model_dir, tmp_path, trainer):
    # GRPO at beta = 0 and RAFT load no reference: the setting was accepted and did nothing
    train, make, settings = {
        "grpo": (train_grpo, config, dict(beta=0.0)),
        "raft": (train_raft, test_raft.config, {}),
    }[trainer]
    cfg = make(tiny_model_dir, tmp_path, reference_model=str(tiny_model_dir), **settings)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(ConfigError, match="^reference_model=.*: this run loads no reference model"):
        train(cfg, run)


@pytest.mark.parametrize(
    "cls, setting, shown",
    [
        (GRPOConfig, {"kl_estimator": "k1"}, "kl_estimator=k1"),
        (GRPOConfig, {"kl_clamp": 10.0}, "kl_clamp=10.0"),
        (RLOOConfig, {"kl_clamp": 5.0}, "kl_clamp=5.0"),
    ],
)
def test_kl_settings_without_a_kl_term_are_refused(cls, setting, shown):
    # beta=0 loads no reference and computes no KL: the setting would change nothing
    with pytest.raises(ConfigError, match=f"^{shown} shapes the KL penalty, and beta=0 has none"):
        check_kl_settings(cls(model="m", beta=0.0, **setting))
    check_kl_settings(cls(model="m", beta=0.1, **setting))  # with a KL term, it is read


@pytest.mark.parametrize(
    "setting, shown",
    [({"std_unbiased": False}, "std_unbiased=false"), ({"adv_eps": 1e-6}, "adv_eps=1e-06")],
)
def test_group_std_settings_without_a_division_by_the_std_are_refused(setting, shown):
    # norm=dr_grpo only subtracts the group mean: the std's settings would change nothing
    reason = "shapes the division by the group's std, and norm=dr_grpo divides by none"
    with pytest.raises(ConfigError, match=f"^{shown} {reason}"):
        check_norm_settings(GRPOConfig(model="m", norm="dr_grpo", **setting))
    check_norm_settings(GRPOConfig(model="m", norm="grpo", **setting))  # divided by the std


def test_the_group_std_has_bessels_correction_by_default():
    # as TRL, OpenRLHF and veRL: rewards [1, 0] get +-0.707 (the population std would give +-1.0)
    cfg = GRPOConfig()
    assert cfg.std_unbiased
    got = group_advantages(torch.tensor([1.0, 0.0]), 2, cfg.norm, cfg.std_unbiased, cfg.adv_eps)
    half = 0.5 / (0.5**0.5 + cfg.adv_eps)
    assert got.tolist() == pytest.approx([half, -half])


def test_every_step_logs_the_sampler_vs_trainer_gap(tiny_model_dir, tmp_path):
    """The rollout's log-probs come from the sampler (KV cache, one token at a time), the loss's
    from one training forward: in fp32 on the same weights they agree to rounding."""
    history = train_grpo(
        config(tiny_model_dir, tmp_path, max_steps=2, mini_batch_size=8),
        prepare_run_dir(tmp_path / "run", resume=False, overwrite=False),
    ).history
    for row in history:
        assert 0 <= row["sampler_logprob_gap"] < 1e-4
        assert 1 <= row["sampler_ratio_max"] < 1.001


def test_a_bf16_run_samples_as_it_trains_so_its_sampler_gap_stays_at_rounding(
    tiny_model_dir, tmp_path
):
    """precision=bf16 samples with bf16 multiplies and cache and trains under bf16 autocast;
    the decoding step computes what autocast computes, so the two agree to a bf16 rounding
    here and there (the step that ran everything in bf16 logged ratios up to 1.85)."""
    fp32, bf16 = (
        train_grpo(
            config(tiny_model_dir, tmp_path, max_steps=2, precision=precision),
            prepare_run_dir(tmp_path / precision, resume=False, overwrite=False),
        ).history
        for precision in ("fp32", "bf16")
    )
    for row in bf16:
        assert 0 <= row["sampler_logprob_gap"] < 1e-3
        assert 1 <= row["sampler_ratio_max"] < 1.01
    assert bf16[0]["loss"] != fp32[0]["loss"]  # it did run in bf16


@pytest.mark.parametrize("task", ["arith", None])
def test_a_bf16_runs_held_out_evaluation_samples_as_its_rollouts_do(
    tiny_model_dir, tmp_path, monkeypatch, task
):
    from rlhfkit.rollout import sample

    dtypes, real = [], sample.generate
    monkeypatch.setattr(
        sample, "generate", lambda *a, **k: dtypes.append(k["dtype"]) or real(*a, **k)
    )
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(json.dumps({"prompt": f"Q: {i} + 1?\nA:"}) + "\n" for i in range(4))
    )
    cfg = config(
        tiny_model_dir,
        tmp_path,
        max_steps=1,
        precision="bf16",
        task=task,
        train_data="" if task else str(held_out),
        eval_data="" if task else str(held_out),
    )
    train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    assert dtypes == [torch.bfloat16, torch.bfloat16]  # at the start and at the end


def test_an_update_that_overflows_the_weights_is_never_checkpointed(tiny_model_dir, tmp_path):
    # lr 1e38: the first update's loss and gradient are finite, the weights it makes are not
    # (one update per step: a second one would see a NaN loss and stop the run itself)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir, tmp_path, lr=1e38, max_grad_norm=0.0, save_every=1, mini_batch_size=16
    )
    with pytest.raises(NumericalFault, match="step 1: the model has non-finite weights"):
        train_grpo(cfg, run)
    assert not run.final.exists() and not any(run.checkpoints.glob("step_*"))


def test_step_rewards_land_on_the_token_that_ends_each_step(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    finished = " 3 + 4 = 7. The answer is 7."
    cut = " 3+4=7 \u00e9 5"  # "\u00e9" is two byte tokens
    rows = [
        tokenizer(finished, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
        tokenizer(cut, add_special_tokens=False)["input_ids"],
    ]
    # the tokens, as the hand example reads them
    assert [tokenizer.decode([i]) for i in rows[0]][6:10] == [" =", " ", "7", "."]
    assert [tokenizer.decode([i]) for i in rows[0]][17:] == [" ", "7", ".", "<|endoftext|>"]
    assert len(rows[1]) == 11 and tokenizer.decode(rows[1][:9]) == " 3+4=7 \u00e9"
    width = max(len(row) for row in rows)
    response_ids = torch.full((2, width), tokenizer.pad_token_id)
    response_mask = torch.zeros(2, width, dtype=torch.bool)
    for r, row in enumerate(rows):
        response_ids[r, : len(row)] = torch.tensor(row)
        response_mask[r, : len(row)] = True
    rollout = Rollout(
        prompt_ids=torch.full((2, 1), 5),
        prompt_mask=torch.ones(2, 1, dtype=torch.bool),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=torch.zeros(2, width),
        finished=torch.tensor([True, False]),
    )
    responses = decode_responses(tokenizer, rollout)
    assert responses == [finished, cut]
    # row 0: the step "3 + 4 = 7" ends at character 10, the answer "... is 7" at 27;
    # row 1: one step through character 10 (the "5"), after the split character
    steps = [[(10, 1.0), (27, 0.5)], [(10, -1.0)]]
    out = step_rewards_on_tokens(tokenizer, rollout, responses, steps, torch.device("cpu"))
    # " 3 + 4 = 7" is tokens 0-8 and "... is 7" ends at token 18 (the EOS is token 20); the
    # split character counts once, so the "5" is token 10, not 9
    assert out.ends.tolist() == [[8, 18], [10, 0]]
    assert out.rewards.tolist() == [[1.0, 0.5], [-1.0, 0.0]]
    assert out.mask.tolist() == [[True, True], [True, False]]


def test_the_missing_eos_penalty_lowers_the_reward_of_cut_responses(tiny_model_dir, tmp_path):
    # 4 new tokens: the tiny model rarely stops that soon, so most responses are cut
    rewards = {}
    for penalty in (0.0, 0.5):
        cfg = config(
            tiny_model_dir, tmp_path, max_steps=1, max_new_tokens=4, missing_eos_penalty=penalty
        )
        run = prepare_run_dir(tmp_path / f"run{penalty}", resume=False, overwrite=False)
        row = train_grpo(cfg, run).history[0]
        rewards[penalty] = (row["reward_mean"], row["truncated_fraction"])
    (plain, cut), (penalised, cut_again) = rewards[0.0], rewards[0.5]
    assert cut == cut_again > 0.5  # the same seeded samples
    assert penalised == pytest.approx(plain - 0.5 * cut, abs=1e-6)


def test_an_uncertainty_penalty_without_a_reward_model_is_refused_before_loading(tmp_path):
    # a function's reward has no ensemble spread: the penalty would silently do nothing
    cfg = config("m", tmp_path, reward_uncertainty_coef=1.0)  # no model at "m": nothing loads
    with pytest.raises(ConfigError, match="reward_uncertainty_coef=1.0 .* has no reward model"):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    assert not (tmp_path / "run" / "final").exists()


def test_the_missing_eos_penalty_is_refused_with_process_supervision(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, supervision="process", missing_eos_penalty=0.5)
    with pytest.raises(ConfigError, match="missing_eos_penalty=0.5 applies to outcome rewards"):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))


def test_a_weighted_sum_is_refused_with_process_supervision(tiny_model_dir, tmp_path):
    # the advantages come from the step rewards alone: the other term would never be trained on
    cfg = config(tiny_model_dir, tmp_path, supervision="process", reward="process + 0.5*task")
    with pytest.raises(ConfigError, match="would be logged but not trained on"):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))


def test_each_source_of_a_weighted_sum_is_logged_beside_the_sum(tiny_model_dir, tmp_path):
    length = length_reward_spec(tmp_path)
    cfg = config(tiny_model_dir, tmp_path, max_steps=1, reward=f"task + 0.5*{length}")
    row = train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)).history[
        0
    ]
    task, chars = row["reward/task"], row[f"reward/{length}"]
    assert chars > 1  # the responses' mean length in characters: the unweighted source
    assert row["reward_mean"] == pytest.approx(task + 0.5 * chars, rel=1e-5)


def test_the_share_of_samples_a_reward_model_read_cut_is_logged_and_warned(
    tiny_model_dir, tmp_path, caplog
):
    rm = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(rm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(rm)
    # room for the longest arith prompt and an EOS: any answer token past it is cut
    prompts = ArithTask().prompts(2000, random.Random(0))
    longest = max(len(tokenizer(p.prompt)["input_ids"]) for p in prompts)
    cuts = {}
    for max_length in (256, longest + 1):
        cfg = config(
            tiny_model_dir,
            tmp_path,
            max_steps=2,
            reward=f"model:{rm}",
            reward_max_length=max_length,
        )
        caplog.clear()
        with caplog.at_level("WARNING", logger="rlhfkit"):
            history = train_grpo(
                cfg, prepare_run_dir(tmp_path / f"run{max_length}", resume=False, overwrite=False)
            ).history
        cuts[max_length] = [row[f"reward_cut_fraction/model:{rm}"] for row in history]
        warned = [r for r in caplog.records if "samples are longer than" in r.getMessage()]
        assert len(warned) == (max_length != 256)  # once, not every step
    assert cuts[256] == [0.0, 0.0]
    assert all(0 < share <= 1 for share in cuts[longest + 1])


def test_gspo_sequence_ratio_climbs_the_reward(tiny_model_dir, tmp_path):
    # mu=2: the second pass sees ratios away from 1, where the sequence ratio and its clip act
    cfg = config(tiny_model_dir, tmp_path, ratio_level="sequence", mu=2)
    result = train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    rewards = [row["reward_mean"] for row in result.history]
    assert sum(rewards[-3:]) / 3 > 1.2 * sum(rewards[:3]) / 3


def test_gspo_is_refused_with_process_supervision(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, tmp_path, supervision="process", ratio_level="sequence")
    with pytest.raises(
        ConfigError, match="ratio_level=sequence .* needs one advantage per response"
    ):
        train_grpo(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
