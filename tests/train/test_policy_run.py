"""What every policy trainer shares (train.policy_run): runs on a user's own prompts and reward
with no built-in task, one end of step (eval_every=-1 never evaluates), and evaluation prompts
kept apart from training prompts by their seed streams."""

import json
import random

import pytest
import torch

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.eval.run_eval import EvalConfig
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.distributed import FrozenModels
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig, train_grpo
from rlhfkit.train.iterative_grpo import (
    IterativeGRPOConfig,
    grpo_round_config,
    held_out_prompts,
    round_prompts,
    train_iterative_grpo,
)
from rlhfkit.train.online_dpo import OnlineDPOConfig, train_online_dpo
from rlhfkit.train.policy_run import PolicyRun, prompt_pools
from rlhfkit.train.ppo import PPOConfig, train_ppo
from rlhfkit.train.raft import RAFTConfig, train_raft
from rlhfkit.train.reward import RewardConfig
from rlhfkit.train.rloo import RLOOConfig, train_rloo
from tests.train.conftest import length_reward_spec

from .test_reward import write_jsonl

TOPICS = [
    "rain",
    "tea",
    "maps",
    "bread",
    "snow",
    "clocks",
    "rivers",
    "owls",
    "glass",
    "chess",
    "moss",
    "kites",
    "salt",
    "bells",
    "wool",
    "ink",
]


@pytest.fixture
def own_data(tmp_path) -> dict:
    """A prompt file to train on, another to evaluate on, and a reward function file."""
    train = [{"prompt": f"Say something about {t}."} for t in TOPICS]
    held_out = [{"prompt": f"Describe {t} briefly."} for t in TOPICS[:4]]
    return {
        "train_data": str(write_jsonl(tmp_path / "train.jsonl", train)),
        "eval_data": str(write_jsonl(tmp_path / "eval.jsonl", held_out)),
        "reward": length_reward_spec(tmp_path),
    }


COMMON = dict(
    max_new_tokens=8,
    eval_max_new_tokens=6,
    max_steps=2,
    lr=1e-3,
    warmup_steps=1,
    eval_every=0,
    save_every=0,
    progress=False,
    tensorboard=False,
)
GROUPS = dict(prompts_per_step=2, group_size=2, mini_batch_size=4, beta=0.1)
TRAINERS = {
    "ppo": (
        train_ppo,
        PPOConfig,
        dict(critic_init="policy", prompts_per_step=4, mini_batch_size=4, ppo_epochs=1),
    ),
    "grpo": (train_grpo, GRPOConfig, GROUPS),
    "rloo": (train_rloo, RLOOConfig, GROUPS),
    "raft": (
        train_raft,
        RAFTConfig,
        dict(prompts_per_round=2, samples_per_prompt=2, mini_batch_size=4, require_correct=False),
    ),
    "online-dpo": (train_online_dpo, OnlineDPOConfig, dict(labeller="reward", prompts_per_step=2)),
}


def run_dir(tmp_path, name="run"):
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def metrics_rows(run) -> list[dict]:
    return [json.loads(line) for line in run.metrics_path.read_text().splitlines()]


@pytest.mark.parametrize("name", list(TRAINERS))
def test_every_trainer_runs_on_own_prompts_and_reward_without_a_task(
    tiny_model_dir, tmp_path, own_data, name
):
    train, config_class, settings = TRAINERS[name]
    cfg = config_class(model=str(tiny_model_dir), **own_data, **settings, **COMMON)
    assert cfg.task is None  # no task is the default
    run = run_dir(tmp_path)
    result = train(cfg, run)
    start, *rows = metrics_rows(run)
    assert [row["step"] for row in rows] == [1, 2] and len(result.history) == 2
    assert start["step"] == 0 and start["eval_reward_mean"] == result.evals[0][1]["reward_mean"]
    # scored by the user's reward, and no task's judge: no gold score anywhere
    assert all(row["reward_mean"] > 0 and "gold_score" not in row for row in rows)
    # evaluation without a task: the reward of greedy answers to eval_data, at the start and end
    assert [step for step, _ in result.evals] == [0, 2]
    assert all(set(metrics) == {"reward_mean"} for _, metrics in result.evals)
    assert "eval_reward_mean" in rows[-1]
    assert not any(key.startswith("eval_gold") for key in rows[-1])
    assert (run.final / "config.json").is_file()


def test_iterative_grpo_runs_on_own_prompts_and_reward_without_a_task(
    tiny_model_dir, tmp_path, own_data
):
    from transformers import AutoTokenizer

    from rlhfkit.models.reward import RewardModel

    rm = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(rm)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(rm)
    grpo = GRPOConfig(
        train_data=own_data["train_data"],
        eval_data=own_data["eval_data"],
        **{**GROUPS, "beta": 0.04},
        **COMMON,
    )
    reward = RewardConfig(
        max_steps=2, batch_size=2, lr=1e-3, warmup_steps=1, eval_every=0, save_every=0
    )
    cfg = IterativeGRPOConfig(
        model=str(tiny_model_dir),
        reward_model=str(rm),
        rounds=1,
        label_prompts=4,
        heldout_prompts=2,
        samples_per_prompt=2,
        label_data=own_data["train_data"],
        labeller="reward",
        label_reward=own_data["reward"],
        grpo=grpo,
        rm=reward,
        progress=False,
        tensorboard=False,
    )
    run = run_dir(tmp_path)
    summary = train_iterative_grpo(cfg, run).rounds[0]
    assert summary["gold_first"] is None and summary["eval_gold_end"] is None  # no task, no gold
    assert summary["rankings"] == 4 and summary["labels_used"] == 6  # 6 prompts ranked, pairs
    rankings = (run.root / "round_01" / "rankings.jsonl").read_text().splitlines()
    labelled = {json.loads(line)["prompt"] for line in rankings}
    assert labelled <= {f"Say something about {t}." for t in TOPICS}


@pytest.mark.parametrize("name", list(TRAINERS))
def test_eval_every_minus_one_never_evaluates(tiny_model_dir, tmp_path, name):
    train, config_class, settings = TRAINERS[name]
    task_settings = dict(
        task="arith", reward=length_reward_spec(tmp_path), train_prompts=16, eval_prompts=4
    )
    if name == "online-dpo":
        task_settings["labeller"] = "annotator"
    cfg = config_class(
        model=str(tiny_model_dir), **{**settings, **task_settings, **COMMON, "eval_every": -1}
    )
    run = run_dir(tmp_path)
    result = train(cfg, run)
    rows = metrics_rows(run)
    assert result.evals == [] and not any(key.startswith("eval_") for row in rows for key in row)
    assert all("gold_score" in row for row in rows)  # a named task's judge scores every step


def test_a_run_without_prompts_or_reward_says_what_to_set(tiny_model_dir, tmp_path, own_data):
    settings = dict(model=str(tiny_model_dir), progress=False, tensorboard=False)
    opened = dict(resume=False, needs_reference=False, stage="grpo")
    with pytest.raises(
        ConfigError, match="train_data=PATH .* or task=NAME \\(rlhfkit tasks list\\)"
    ):
        PolicyRun(
            GRPOConfig(**settings, reward=own_data["reward"]), run_dir(tmp_path, "a"), **opened
        )
    with pytest.raises(ConfigError, match="no reward: set reward="):
        PolicyRun(
            GRPOConfig(**settings, train_data=own_data["train_data"]),
            run_dir(tmp_path, "b"),
            **opened,
        )
    with pytest.raises(ConfigError, match="labeller=annotator is a built-in task's simulated"):
        train_online_dpo(OnlineDPOConfig(**settings, **own_data), run_dir(tmp_path, "c"))


def test_without_eval_data_and_task_nothing_is_evaluated(tiny_model_dir, tmp_path, own_data):
    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        train_data=own_data["train_data"],
        reward=own_data["reward"],
        **GROUPS,
        **COMMON,
    )
    assert train_grpo(cfg, run_dir(tmp_path)).evals == []


@pytest.mark.parametrize(
    "config_class",
    [PPOConfig, GRPOConfig, RLOOConfig, RAFTConfig, OnlineDPOConfig, IterativeGRPOConfig],
)
def test_task_is_optional_and_a_misspelt_one_is_a_config_error(config_class):
    assert load_config(config_class).task is None
    with pytest.raises(ConfigError, match=r"^config key 'task': expected one of 'arith', 'advice'"):
        load_config(config_class, None, ["task=arithmetic"])


@pytest.mark.parametrize(
    "config_class", [DPOConfig, PPOConfig, GRPOConfig, RLOOConfig, RAFTConfig, OnlineDPOConfig]
)
def test_frozen_models_is_replicated_by_default_and_a_misspelt_one_is_a_config_error(
    config_class,
):
    assert load_config(config_class).frozen_models is FrozenModels.REPLICATED
    assert load_config(config_class, None, ["frozen_models=sharded"]).frozen_models is (
        FrozenModels.SHARDED
    )
    with pytest.raises(ConfigError) as error:
        load_config(config_class, None, ["frozen_models=shraded"])
    assert str(error.value) == (
        "config key 'frozen_models': expected one of 'replicated', 'sharded', got 'shraded'"
    )


def texts(prompts) -> set[str]:
    return {str(p.prompt) for p in prompts}


def test_training_and_evaluation_prompts_come_from_their_own_seed_streams():
    task, seed = ArithTask(), 3
    pools = prompt_pools(
        GRPOConfig(task="arith", seed=seed, train_prompts=50, eval_prompts=20), task
    )
    assert pools.eval == task.prompts(20, random.Random(derive_seed(seed, SeedStream.EVAL_PROMPTS)))
    drawn = task.prompts(50, random.Random(derive_seed(seed, SeedStream.TRAIN_PROMPTS)))
    assert pools.train == [p for p in drawn if p not in pools.eval]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_evaluation_prompts_never_overlap_training_prompts(seed):
    task = ArithTask()
    # a policy run holds out its evaluation prompts
    pools = prompt_pools(GRPOConfig(task="arith", seed=seed), task)
    assert texts(pools.eval) and not texts(pools.train) & texts(pools.eval)
    # rlhfkit eval's default draws, with the run's seed, are the run's held-out prompts
    default = EvalConfig(seed=seed)
    rng = random.Random(derive_seed(seed, SeedStream.EVAL_PROMPTS))
    evaluated = texts(task.prompts(default.num_prompts, rng))
    assert evaluated == texts(pools.eval[: default.num_prompts])
    assert not texts(pools.train) & evaluated
    # iterative GRPO: no round labels an evaluation prompt (round 1 once drew exactly the
    # prompts rlhfkit eval draws), each round's GRPO holds out its own, and rounds differ
    cfg = IterativeGRPOConfig(model="m", reward_model="rm", task="arith", seed=seed, rounds=3)
    held_out, rounds = held_out_prompts(cfg), []
    for r in range(1, cfg.rounds + 1):
        labelled = texts(round_prompts(cfg, r, held_out))
        assert len(labelled) == cfg.label_prompts + cfg.heldout_prompts
        assert not labelled & evaluated
        round_pools = prompt_pools(grpo_round_config(cfg, r, "m", "rm"), task)
        assert not texts(round_pools.train) & texts(round_pools.eval)
        rounds.append(labelled)
    assert not rounds[0] & rounds[1] and not rounds[1] & rounds[2]


def test_kl_clamp_defaults_off_and_bounds_the_penalty_in_a_run(tiny_model_dir, tmp_path):
    assert PPOConfig().kl_clamp == GRPOConfig().kl_clamp == RLOOConfig().kl_clamp == 0.0
    # the policy moves away from its reference in a few steps at a large learning rate; a tiny
    # clamp bounds every token's k3 estimate, so the KL per token can never pass it
    settings = dict(
        model=str(tiny_model_dir),
        task="arith",
        reward=length_reward_spec(tmp_path),
        train_prompts=16,
        eval_prompts=4,
        prompts_per_step=2,
        group_size=4,
        mini_batch_size=8,
        beta=0.1,
        **{**COMMON, "lr": 5e-2, "max_steps": 4, "eval_every": -1},
    )
    free = train_grpo(GRPOConfig(**settings), run_dir(tmp_path, "free")).history
    clamped = train_grpo(GRPOConfig(**settings, kl_clamp=1e-3), run_dir(tmp_path, "clamped"))
    assert max(row["kl_per_token"] for row in free) > 1e-3
    assert all(row["kl_per_token"] <= 1e-3 + 1e-9 for row in clamped.history)


def test_checkpointed_trainer_state_is_plain_data(tiny_model_dir, tmp_path):
    # online DPO's pool and labeller: read back with weights_only=True, no object unpickled
    cfg = OnlineDPOConfig(
        model=str(tiny_model_dir),
        task="arith",
        labeller="annotator",
        regime="iterative",
        refresh_every=3,
        samples_per_prompt=2,
        prompts_per_step=2,
        train_prompts=16,
        eval_prompts=4,
        **{**COMMON, "max_steps": 3, "save_every": 1, "eval_every": -1},
    )
    run = run_dir(tmp_path)
    train_online_dpo(cfg, run)
    path = run.checkpoints / "step_00000002" / "trainer_state.pt"
    state = torch.load(path, weights_only=True)
    assert state["pool"]["start"] == 0 and len(state["pool"]["steps"]) == 3
    assert isinstance(state["pool"]["steps"][2]["groups"][0]["responses"][0]["input_ids"], list)
    assert state["labeller"]["labels_used"] == 6


def test_a_checkpoint_without_trainer_state_is_refused_in_one_line(
    tiny_model_dir, tmp_path, caplog
):
    cfg = GRPOConfig(
        model=str(tiny_model_dir),
        task="arith",
        train_prompts=16,
        eval_prompts=4,
        **{**GROUPS, **COMMON, "save_every": 1, "eval_every": -1},
    )
    run = run_dir(tmp_path)
    train_grpo(cfg, run)
    (run.checkpoints / "step_00000001" / "trainer_state.pt").unlink()
    resumed = prepare_run_dir(tmp_path / "run", resume=True, overwrite=False)
    with pytest.raises(RlhfkitError, match="every checkpoint in .* is damaged"):
        train_grpo(cfg, resumed, resume=True)
    assert "trainer_state.pt is missing" in caplog.text
