import dataclasses
import json
import logging
import random
import shutil
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhfkit.cli import run as cli
from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.reward import RewardModel
from rlhfkit.runtime.config import load_config, save_config
from rlhfkit.runtime.metrics import MetricsLogger, read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.train import iterative_grpo
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.iterative_config import (
    check_label_prompts,
    grpo_round_config,
    rm_round_config,
)
from rlhfkit.train.iterative_grpo import IterativeGRPOConfig, check_config, train_iterative_grpo
from rlhfkit.train.reward import RewardConfig

from .test_policy_models import assert_only_adapters_trained_and_merged, built_policies
from .test_reward import gold_ranking, untied_copy, write_jsonl


def test_settings_that_leave_nothing_to_do_are_rejected():
    with pytest.raises(ConfigError, match="needs model=PATH"):
        check_config(IterativeGRPOConfig())
    with pytest.raises(ConfigError, match="replay_fraction"):
        check_config(
            IterativeGRPOConfig(model="m", reward_model="r", task="advice", replay_fraction=1.0)
        )
    with pytest.raises(ConfigError, match="grpo.train_data=PATH .* label_data=PATH"):
        check_config(IterativeGRPOConfig(model="m", reward_model="r"))
    with pytest.raises(ConfigError, match="labeller=annotator is a built-in task's"):
        check_config(
            IterativeGRPOConfig(
                model="m", reward_model="r", label_data="p", grpo=GRPOConfig(train_data="p")
            )
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("judge_model=j", "judge_model=j is read only with labeller=judge, and labeller=annot"),
        ("label_reward=f.py:g", "label_reward=f.py:g is read only with labeller=reward"),
        (
            "labeller=reward label_reward=f.py:g target_agreement=0.8",
            "target_agreement=0.8 is read by labeller=annotator only",
        ),
    ],
)
def test_a_labellers_setting_without_that_labeller_is_refused(override, message):
    # it used to be ignored: the task's annotator ranked every round's samples, silently
    from rlhfkit.runtime.config import load_config

    required = ["model=m", "reward_model=r", "task=advice"]
    cfg = load_config(IterativeGRPOConfig, None, [*required, *override.split()])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("grpo.seed=5", "grpo.seed is set by iterative GRPO from seed= .*; set seed= instead"),
        ("grpo.model=x", "grpo.model is set by iterative GRPO each round"),
        ("grpo.reward=task", "grpo.reward is set by iterative GRPO each round"),
        ("grpo.task=arith", "grpo.task is set by iterative GRPO from task="),
        ("grpo.reference_model=x", "grpo.reference_model is set by iterative GRPO from reset_"),
        ("grpo.device=cpu", "grpo.device is set by iterative GRPO from device="),
        ("grpo.progress=false", "grpo.progress is set by iterative GRPO"),
        ("grpo.force_lr=true", "grpo.force_lr is set by iterative GRPO from force_lr="),
        ("grpo.max_nonfinite_skips=9", "grpo.max_nonfinite_skips is set by iterative GRPO from"),
        ("rm.seed=3", "rm.seed is set by iterative GRPO"),
        ("rm.model=x", "rm.model is set by iterative GRPO"),
        ("rm.train_data=x", "rm.train_data is set by iterative GRPO"),
        ("rm.eval_data=x", "rm.eval_data is set by iterative GRPO"),
        ("rm.tensorboard=false", "rm.tensorboard is set by iterative GRPO"),
        ("rm.force_lr=true", "rm.force_lr is set by iterative GRPO from force_lr="),
        ("rm.max_nonfinite_skips=9", "rm.max_nonfinite_skips is set by iterative GRPO from"),
    ],
)
def test_a_key_each_round_fills_is_refused_by_name_when_the_user_sets_it(override, message):
    from rlhfkit.runtime.config import load_config

    required = ["model=m", "reward_model=r", "task=advice"]
    cfg = load_config(IterativeGRPOConfig, None, [*required, *override.split()])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg)
    # the keys a round does not fill are the user's
    own = ["grpo.max_steps=3", "rm.lr=1e-5"]
    check_config(load_config(IterativeGRPOConfig, None, [*required, *own]))


def test_a_key_each_round_fills_is_refused_when_given_at_its_default():
    from rlhfkit.runtime.config import given_keys, load_config
    from rlhfkit.train.iterative_config import check_round_keys

    required = ["model=m", "reward_model=r", "task=advice"]
    for given in (["grpo.seed=0"], ['rm.eval_data=""']):
        cfg = load_config(IterativeGRPOConfig, None, [*required, *given])
        check_config(cfg)  # the values alone are the defaults
        key = given[0].split("=")[0]
        with pytest.raises(ConfigError, match=f"^{key} is set by iterative GRPO"):
            check_round_keys(cfg, given_keys(overrides=given))
    assert set(IterativeGRPOConfig.FILLED) == {"grpo", "rm"}


def test_each_round_takes_the_jobs_max_nonfinite_skips():
    overrides = ["model=m", "reward_model=r", "task=advice", "max_nonfinite_skips=9"]
    cfg = load_config(IterativeGRPOConfig, None, overrides)
    assert grpo_round_config(cfg, 1, "m", "r").max_nonfinite_skips == 9
    assert rm_round_config(cfg, 1, "r", Path(".")).max_nonfinite_skips == 9


@pytest.mark.parametrize("key", ["grpo.lr", "rm.lr"])
def test_each_round_lr_is_checked_by_its_key_before_the_first_round(
    smollm2_config_dir, tmp_path, key
):
    model = str(smollm2_config_dir)  # GRPO trains the policy, each refresh the reward model
    overrides = [f"model={model}", f"reward_model={model}", "task=advice", f"{key}=1e-4"]
    cfg = load_config(IterativeGRPOConfig, None, overrides)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(RlhfkitError, match=rf"^{key}=0\.0001 is far too large"):
        train_iterative_grpo(cfg, run)
    assert list(run.root.iterdir()) == []  # refused before the first round
    # forced, every round is too: the first GRPO goes on to load the policy, a directory with a
    # config alone (no tokenizer, no weights)
    with pytest.raises(RlhfkitError, match="no tokenizer"):
        train_iterative_grpo(dataclasses.replace(cfg, force_lr=True), run)


def test_a_reward_model_with_other_heads_is_refused_before_the_first_round(
    tiny_model_dir, tmp_path
):
    rm = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir, num_heads=2).save_pretrained(rm)
    overrides = [f"model={tiny_model_dir}", f"reward_model={rm}", "task=advice"]
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(ConfigError, match=r"has 2 reward heads and rm.num_heads=1: set rm.num_he"):
        train_iterative_grpo(load_config(IterativeGRPOConfig, None, overrides), run)
    assert list(run.root.iterdir()) == []


def test_imitation_on_an_untied_reward_model_is_refused_before_the_first_round(
    tiny_model_dir, tmp_path
):
    # round 2 retrains round 1's saved reward model, which keeps no LM head to imitate with
    untied = untied_copy(tiny_model_dir, tmp_path / "untied")
    overrides = [f"model={tiny_model_dir}", f"reward_model={untied}", "task=advice"]
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = load_config(IterativeGRPOConfig, None, [*overrides, "rm.imitation_coef=0.5"])
    with pytest.raises(ConfigError, match=r"^rm.imitation_coef=0.5 with .* untied"):
        train_iterative_grpo(cfg, run)
    assert list(run.root.iterdir()) == []


@pytest.fixture(scope="module")
def start(tiny_model_dir, tmp_path_factory):
    """A reward model started from the tiny model, and rankings it was 'trained' on."""
    folder = tmp_path_factory.mktemp("iterative")
    rm = folder / "rm"
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(rm)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(rm)
    rng = random.Random(0)
    history = write_jsonl(
        folder / "history.jsonl", [gold_ranking(p, rng) for p in AdviceTask().prompts(30, rng)]
    )
    return str(rm), history


def config(model, start, **overrides) -> IterativeGRPOConfig:
    rm, history = start
    grpo = GRPOConfig(
        max_steps=2,
        prompts_per_step=4,
        group_size=4,
        mini_batch_size=8,
        max_new_tokens=8,
        eval_max_new_tokens=6,
        train_prompts=32,
        eval_prompts=4,
        lr=1e-3,
        warmup_steps=1,
        eval_every=0,
        save_every=1,
    )
    reward = RewardConfig(
        max_steps=3, batch_size=4, lr=1e-3, warmup_steps=1, eval_every=0, save_every=2
    )
    settings = dict(
        model=str(model),
        task="advice",
        reward_model=rm,
        reward_data=history,
        rounds=2,
        label_prompts=9,
        heldout_prompts=4,
        samples_per_prompt=3,
        grpo=grpo,
        rm=reward,
        progress=False,
        tensorboard=False,
    )
    return IterativeGRPOConfig(**{**settings, **overrides})


def run_dir(tmp_path, name):
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def grpo_config(run, round_number) -> dict:
    return yaml.safe_load(
        (run.root / f"round_{round_number:02d}" / "grpo" / "config.yaml").read_text()
    )


def test_each_round_trains_on_the_last_reward_model_from_the_last_policy(
    tiny_model_dir, start, tmp_path
):
    run = run_dir(tmp_path, "run")
    cfg = config(tiny_model_dir, start)
    result = train_iterative_grpo(cfg, run)
    assert [s["round"] for s in result.rounds] == [1, 2]
    first, second = grpo_config(run, 1), grpo_config(run, 2)
    # round 1: the given policy and reward model; round 2: round 1's policy (also its reference)
    # and round 1's retrained reward model
    assert first["model"] == str(tiny_model_dir) and first["reward"] == f"model:{start[0]}"
    assert (
        second["model"] == str(run.root / "round_01" / "grpo" / "final")
        and second["reference_model"] == ""
    )
    assert second["reward"] == f"model:{run.root / 'round_01' / 'rm' / 'final'}"
    # every round evaluates on the same held-out prompts, the task's stream for `seed`, so
    # round 2's start is round 1's end (the same policy on the same prompts)
    assert first["eval_data"] == second["eval_data"] == str(run.root / "eval_prompts.jsonl")
    assert result.rounds[1]["eval_gold_start"] == result.rounds[0]["eval_gold_end"]
    # the reward model's rows: this round's rankings plus 10% replay (9 new rows: round(1.0) = 1)
    for r in (1, 2):
        folder = run.root / f"round_{r:02d}"
        new = [json.loads(line) for line in (folder / "rankings.jsonl").read_text().splitlines()]
        mix = [json.loads(line) for line in (folder / "rm_train.jsonl").read_text().splitlines()]
        assert len(new) == 9 and all(len(row["responses"]) >= 2 for row in new)
        assert len(mix) == 10 and all(row in mix for row in new)
        assert result.rounds[r - 1]["replay_rows"] == 1
    # round 2 replays from the initial data and round 1's rankings
    assert 0.0 <= result.rounds[1]["accuracy_before"] <= 1.0
    metrics = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in metrics] == [1, 2] and "accuracy_after" in metrics[0]
    assert (
        load_file(run.final / "model.safetensors").keys()
        == load_file(run.root / "round_02" / "grpo" / "final" / "model.safetensors").keys()
    )
    AutoModelForCausalLM.from_pretrained(run.final)


def test_controls_keep_the_first_reward_model_or_the_first_reference(
    tiny_model_dir, start, tmp_path
):
    run = run_dir(tmp_path, "fixed")
    train_iterative_grpo(
        config(tiny_model_dir, start, retrain_reward_model=False, reset_reference=False), run
    )
    second = grpo_config(run, 2)
    assert second["reward"] == f"model:{start[0]}"  # the first reward model throughout
    assert second["reference_model"] == str(
        tiny_model_dir
    )  # the starting policy stays the reference
    assert not (run.root / "round_02" / "rm").exists()


def test_a_run_resumed_mid_round_ends_as_one_that_went_straight_through(
    tiny_model_dir, start, tmp_path
):
    cfg = config(tiny_model_dir, start)
    straight = run_dir(tmp_path, "straight")
    save_config(cfg, straight.config_path)  # what the command writes first
    train_iterative_grpo(cfg, straight)
    # a copy stopped in round 2 after its labels, in the middle of the reward model's training
    shutil.copytree(straight.root, tmp_path / "stopped")
    stopped = prepare_run_dir(
        tmp_path / "stopped", resume=True, overwrite=False, resume_needs_checkpoint=False
    )
    folder = stopped.root / "round_02"
    for name in ("reward.json", "round.json"):
        (folder / name).unlink()
    shutil.rmtree(folder / "rm" / "final")
    shutil.rmtree(stopped.final)
    result = train_iterative_grpo(cfg, stopped, resume=True)
    assert [s["round"] for s in result.rounds] == [1, 2]
    for path in ("round_02/rm/final/model.safetensors", "final/model.safetensors"):
        a, b = load_file(straight.root / path), load_file(stopped.root / path)
        assert all((a[k] == b[k]).all() for k in a), path
    metrics = [json.loads(line) for line in stopped.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in metrics] == [1, 2]


class _Killed(Exception):
    """Stands for a kill -9 at one instant of the run."""


def _scalars(run) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.tensorboard))  # hides the events a resume purged
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _rows(run) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "time"} for row in read_metrics(run.root)]


@pytest.mark.parametrize("killed_after", ["the metrics row", "round.json"])
def test_a_run_killed_as_a_round_ends_resumes_to_the_metrics_of_one_that_went_straight_through(
    tiny_model_dir, start, tmp_path, monkeypatch, killed_after
):
    pytest.importorskip("tensorboard", reason="the TensorBoard half needs the tensorboard extra")
    cfg = config(tiny_model_dir, start, tensorboard=True)
    straight = run_dir(tmp_path, "straight")
    save_config(cfg, straight.config_path)
    train_iterative_grpo(cfg, straight)
    # round 1 stopped right after one of its two last writes (its row, its round.json)
    real_log, real_write = MetricsLogger.log, iterative_grpo._Part.write

    def log(self, step, metrics, *, stage="train"):
        real_log(self, step, metrics, stage=stage)
        if killed_after == "the metrics row" and stage == "iterative_grpo":
            raise _Killed

    def write(self, summary):
        written = real_write(self, summary)
        if killed_after == "round.json" and self.path.name == "round.json":
            raise _Killed
        return written

    stopped = run_dir(tmp_path, "stopped")
    save_config(cfg, stopped.config_path)
    with monkeypatch.context() as patch:
        patch.setattr(MetricsLogger, "log", log)
        patch.setattr(iterative_grpo._Part, "write", write)
        with pytest.raises(_Killed):
            train_iterative_grpo(cfg, stopped)
    assert not (stopped.root / "round_02").exists()
    # TensorBoard reads event files in name order, and a name holds the second the file was made
    # in: a resume, a new process, starts at least a second after the run it continues did
    time.sleep(1.0)
    resumed = prepare_run_dir(
        stopped.root, resume=True, overwrite=False, resume_needs_checkpoint=False
    )
    train_iterative_grpo(cfg, resumed, resume=True)
    assert _rows(resumed) == _rows(straight)
    assert [row["step"] for row in _rows(resumed)] == [1, 2]
    assert _scalars(resumed) == _scalars(straight)
    assert _scalars(resumed)["iterative_grpo/round"] == [(1, 1.0), (2, 2.0)]


def test_the_command_takes_nested_overrides_and_resumes_only_a_started_run(tmp_path, capsys):
    cli(
        [
            "iterative-grpo",
            "--print-config",
            "rounds=4",
            "grpo.max_steps=7",
            "rm.lr=1e-5",
            "replay_fraction=0.2",
        ]
    )
    printed = json.loads(capsys.readouterr().out)
    assert (
        printed["rounds"] == 4 and printed["grpo"]["max_steps"] == 7 and printed["rm"]["lr"] == 1e-5
    )
    assert printed["replay_fraction"] == 0.2
    with pytest.raises(RlhfkitError, match="nothing to resume"):
        cli(
            ["iterative-grpo", "model=m", "reward_model=r", "--runs-dir", str(tmp_path), "--resume"]
        )


def test_lora_rounds_train_only_adapters_and_hand_on_merged_models(
    tiny_model_dir, start, tmp_path, monkeypatch
):
    cfg = config(tiny_model_dir, start, rounds=1)
    lora = dict(lora_r=4, lora_alpha=8)
    cfg = dataclasses.replace(
        cfg, grpo=dataclasses.replace(cfg.grpo, **lora), rm=dataclasses.replace(cfg.rm, **lora)
    )
    policies = built_policies(monkeypatch)
    run = run_dir(tmp_path, "run")
    train_iterative_grpo(cfg, run)
    round_final = run.root / "round_01" / "grpo" / "final"
    assert len(policies) == 1
    assert_only_adapters_trained_and_merged(tiny_model_dir, policies[0], round_final)
    assert (run.final / "model.safetensors").read_bytes() == (
        round_final / "model.safetensors"
    ).read_bytes()
    # the refreshed reward model is a plain classifier too, trained: the next round's reward
    rm_start = load_file(Path(start[0]) / "model.safetensors")
    rm_final = load_file(run.root / "round_01" / "rm" / "final" / "model.safetensors")
    assert rm_final.keys() == rm_start.keys()
    assert any((rm_final[key] != rm_start[key]).any() for key in rm_start)
    # keeping the first policy as every round's reference is not LoRA's (its base, adapters off)
    with pytest.raises(ConfigError, match="reset_reference=false with grpo.lora_r=4"):
        check_config(dataclasses.replace(cfg, reset_reference=False))


def test_an_ensemble_reward_model_is_scored_and_retrained_with_its_heads(
    tiny_model_dir, start, tmp_path
):
    # the held-out accuracy before each refresh loads the reward model with rm.num_heads; it
    # loaded one head whatever the model had, and refused the demo's 4-head reward model
    rm, history = start
    ensemble = tmp_path / "ensemble"
    RewardModel.from_pretrained(tiny_model_dir, num_heads=4).save_pretrained(ensemble)
    AutoTokenizer.from_pretrained(rm).save_pretrained(ensemble)
    cfg = config(tiny_model_dir, (str(ensemble), history), rounds=1)
    cfg = dataclasses.replace(cfg, rm=dataclasses.replace(cfg.rm, num_heads=4))
    result = train_iterative_grpo(cfg, run_dir(tmp_path, "run"))
    assert 0.0 <= result.rounds[0]["accuracy_before"] <= 1.0
    refreshed = RewardModel.from_pretrained(
        tmp_path / "run" / "round_01" / "rm" / "final", num_heads=4
    )
    assert refreshed.num_heads == 4


def test_label_data_made_only_of_evaluation_prompts_is_refused_before_round_one(
    tiny_model_dir, start, tmp_path
):
    # no round labels an evaluation prompt: round 1 used to train its GRPO, then stop on
    # "round_01/rankings.jsonl: the dataset has no rows"
    rng = random.Random(0)
    rows = [{"prompt": p.prompt, **p.metadata} for p in AdviceTask().prompts(8, rng)]
    prompts = str(write_jsonl(tmp_path / "prompts.jsonl", rows))
    cfg = config(tiny_model_dir, start, label_data=prompts)
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, eval_data=prompts))
    run = run_dir(tmp_path, "run")
    with pytest.raises(RlhfkitError, match=r"^label_data=.*: all 8 of its prompts are evaluation"):
        train_iterative_grpo(cfg, run)
    assert not (run.root / "round_01").exists()


@pytest.mark.parametrize(
    "count, expected",
    [
        (
            4,
            "4 prompts to label, fewer than label_prompts + heldout_prompts = 3 + 2: each round "
            "ranks all 4, 3 to train the reward model and 1 held out",
        ),
        (
            2,
            "2 to train the reward model and 0 held out (its accuracy on the new policy is then "
            "not measured)",
        ),
    ],
)
def test_label_data_with_fewer_prompts_than_a_round_wants_is_told(caplog, count, expected):
    prompts = [PromptExample(prompt=f"Q{i}?") for i in range(count + 1)]
    cfg = IterativeGRPOConfig(label_data="mine.jsonl", label_prompts=3, heldout_prompts=2)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        check_label_prompts(cfg, prompts, held_out={"Q0?"})  # Q0 is an evaluation prompt
    assert expected in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        check_label_prompts(cfg, prompts * 5, held_out=set())  # enough: nothing said
    assert caplog.text == ""


def test_a_round_left_without_rankings_says_why(tiny_model_dir, start, tmp_path):
    # a labeller that ties every response leaves no ranking: said by the round, not by the
    # reward model finding an empty file
    constant = tmp_path / "constant.py"
    constant.write_text(
        "def same(prompts, responses, **columns):\n    return [1.0] * len(responses)\n"
    )
    cfg = config(
        tiny_model_dir, start, rounds=1, labeller="reward", label_reward=f"{constant}:same"
    )
    with pytest.raises(
        RlhfkitError, match=r"^round 1: of 13 prompts ranked, 13 had no preference .* 0 rankings"
    ):
        train_iterative_grpo(cfg, run_dir(tmp_path, "run"))


def test_a_bf16_runs_rankings_are_sampled_in_bf16_as_its_rollouts_are(
    tiny_model_dir, start, tmp_path, monkeypatch
):
    """grpo.precision=bf16: the responses each round ranks come from the policy sampled as the
    round's GRPO samples it (every sampler of a bf16 run samples in bf16)."""
    import torch

    from rlhfkit.runtime.device import Precision
    from rlhfkit.train import iterative_grpo

    class Sampled(Exception):
        pass

    def sample_responses(*args, dtype=None, **kwargs):
        raise Sampled(dtype)

    monkeypatch.setattr(iterative_grpo, "sample_responses", sample_responses)
    base = config(tiny_model_dir, start)
    for precision, dtype in ((Precision.BF16, torch.bfloat16), (Precision.FP32, None)):
        cfg = dataclasses.replace(base, grpo=dataclasses.replace(base.grpo, precision=precision))
        part = iterative_grpo._Part(tmp_path, f"labels_{precision.value}")
        with pytest.raises(Sampled) as sampled:
            iterative_grpo._labels(cfg, 1, tmp_path, str(tiny_model_dir), None, set(), part)
        assert sampled.value.args == (dtype,)
