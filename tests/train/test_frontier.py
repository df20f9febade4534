"""`rlhfkit frontier` end to end on the tiny model (a few steps per stage), its filled keys and its
learning-rate check on a pretrained model's shape."""

import json
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.runtime.config import load_config
from rlhfkit.train.frontier import Frontier, plan_stages, stage_configs_of
from rlhfkit.train.frontier_config import FrontierConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sentiment_smollm2.yaml"
EVAL_PROMPTS, EVAL_SAMPLES, STEPS = 6, 2, 2
QUIET = ("progress=false", "tensorboard=false")
TINY = [
    "data.sft_rows=48",
    "data.sft_eval_rows=4",
    f"data.eval_prompts={EVAL_PROMPTS}",
    "data.collect_prompts=8",
    "data.heldout_rankings=4",
    "data.max_new_tokens=8",
    f"eval_samples={EVAL_SAMPLES}",
    "eval_max_new_tokens=8",
    "report_samples=3",
    "points_per_run=2",
    "dpo_betas=[0.1,1.0]",
    "sft.max_steps=4",
    "sft.batch_size=12",
    "sft.lr=1e-2",
    "sft.eval_every=0",
    "sft.sample_every=0",
    "rm.max_steps=2",
    "rm.batch_size=4",
    "rm.eval_every=0",
    "ppo.prompts_per_step=4",
    "ppo.mini_batch_size=4",
    "ppo.ppo_epochs=1",
    "ppo.max_new_tokens=8",
    "grpo.prompts_per_step=2",
    "grpo.group_size=2",
    "grpo.mini_batch_size=4",
    "grpo.max_new_tokens=8",
    "dpo.batch_size=4",
    "dpo.lr=5e-2",
    "dpo.eval_every=0",
    *(f"{stage}.max_steps={STEPS}" for stage in ("ppo", "grpo", "dpo")),
    *(f"{stage}.{key}" for stage in ("sft", "rm", "ppo", "grpo", "dpo") for key in QUIET),
]
RUNS = ("ppo", "grpo_rm", "grpo_gold", "dpo_beta0.1", "dpo_beta1")


@pytest.fixture(scope="module")
def frontier(tiny_model_dir, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("frontier")
    cli.run(["frontier", f"model={tiny_model_dir}", f"runs_dir={runs}", "name=t", *TINY])
    return runs / "t"


@pytest.fixture(scope="module")
def summary(frontier) -> dict:
    return json.loads((frontier / "summary.json").read_text())


def test_writes_the_figure_and_the_reports(frontier):
    assert (frontier / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (frontier / "frontier.svg").read_text()[:1000]
    page = (frontier / "report.html").read_text()
    assert page.count('<img class="plot"') == 1 and "data:image/png;base64," in page
    report = (frontier / "report.md").read_text()
    assert "![reward-KL frontier](frontier.png)" in report


def test_every_run_has_its_checkpoints_on_the_frontier(summary):
    points = summary["points"]
    assert [p["step"] for p in points if p["run"] == "sft"] == [0]
    for run in RUNS:  # points_per_run=2 over 2 steps: the checkpoint of step 1, the final model
        assert [p["step"] for p in points if p["run"] == run] == [1, 2], run
        assert summary["runs"][run]["steps"] == STEPS
    for p in points:
        for key in ("gold_sampled", "kl_k1_per_sequence"):
            assert p[f"{key}_low"] <= p[key] <= p[f"{key}_high"], (p["run"], key)
        assert -1 <= p["gold_sampled"] <= 1  # VADER's compound score
        if p["run"] != "sft":  # every answer against SFT's to the same prompt
            assert p["win_rate_sampled_n"] == EVAL_PROMPTS * EVAL_SAMPLES
            assert p["win_rate_greedy_n"] == EVAL_PROMPTS


def test_sft_sits_at_zero_kl_and_dpo_moves_away(summary):
    by_run = {p["run"]: p for p in summary["points"]}  # the last point of each: its final model
    # SFT is its own reference: the sampler's log-probs against a forward pass of the same model
    assert abs(by_run["sft"]["kl_k1_per_sequence"]) < 1e-4
    # DPO at a large lr changes the policy in two steps (the other runs' rewards can all tie on
    # the tiny model's answers, so they may not move)
    for run in ("dpo_beta0.1", "dpo_beta1"):
        assert by_run[run]["kl_k3_per_token"] > 1e-3, run


def test_the_tables_show_every_run_and_stage(frontier, summary):
    report = (frontier / "report.md").read_text()
    for label in ["SFT", *(summary["runs"][run]["label"] for run in RUNS)]:
        assert f"| {label} |" in report, label
    assert "| GRPO (sentiment reward) | 2 |" in report  # its final model, in the point table
    stages = ["data", "sft", "collect", "reward model", *RUNS, "evaluate"]
    assert list(summary["stages"]) == stages
    assert summary["seconds"] >= sum(s["seconds"] for s in summary["stages"].values())
    machine = summary["machine"]  # what the timings depend on
    assert (
        machine["cpu"] and machine["torch_threads"] >= 1 and len(machine["load_average_end"]) == 3
    )
    samples = report.split("## Side by side")[1].splitlines()
    rows = [line for line in samples if line.startswith("| ")]
    assert len(rows) == 1 + 3  # the head, one row per report_samples
    assert all(row.count("[gold ") == 1 + len(RUNS) for row in rows[1:])


def test_a_key_the_frontier_fills_is_refused_by_name(tmp_path):
    cfg = load_config(FrontierConfig, overrides=["dpo.beta=0.2"])
    with pytest.raises(ConfigError, match=r"dpo.beta is set by the frontier .*set dpo_betas="):
        plan_stages(cfg, tmp_path)
    with pytest.raises(ConfigError, match="dpo_betas is empty"):
        plan_stages(load_config(FrontierConfig, overrides=["dpo_betas=[]"]), tmp_path)
    # each beta's run has its own directory, dpo_beta<b>: a repeated one used to overwrite the
    # first, and both points of the frontier then showed the second run
    for betas in ("[0.1,0.1]", "[0.1234567,0.12345671]"):
        with pytest.raises(ConfigError, match=r"dpo_betas=.* repeats a beta"):
            plan_stages(load_config(FrontierConfig, overrides=[f"dpo_betas={betas}"]), tmp_path)
    skips = load_config(FrontierConfig, overrides=["rm.max_nonfinite_skips=5"])
    with pytest.raises(ConfigError, match=r"rm.max_nonfinite_skips is set by the frontier from"):
        plan_stages(skips, tmp_path)


def test_every_stage_takes_the_frontiers_max_nonfinite_skips(tmp_path):
    plan = plan_stages(load_config(FrontierConfig, overrides=["max_nonfinite_skips=5"]), tmp_path)
    assert [stage.max_nonfinite_skips for stage in stage_configs_of(plan)] == [5] * 8


def test_every_stage_lr_is_checked_against_a_pretrained_model(
    smollm2_config_dir, tiny_model_dir, tmp_path
):
    where = [f"model={smollm2_config_dir}", f"runs_dir={tmp_path}"]
    with pytest.raises(RlhfkitError, match=r"^sft\.lr=0\.001 is far too large"):
        Frontier(load_config(FrontierConfig, overrides=where))
    too_fast = load_config(FrontierConfig, EXAMPLE, [*where, "ppo.critic_lr=1e-3"])
    with pytest.raises(RlhfkitError, match=r"^ppo\.critic_lr=0\.001 is far too large"):
        Frontier(too_fast)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
    Frontier(load_config(FrontierConfig, EXAMPLE, where))  # the example's rates suit the model
    Frontier(
        load_config(FrontierConfig, overrides=[f"model={tiny_model_dir}", f"runs_dir={tmp_path}"])
    )
    # forced: every stage is forced too, and a stage's own force_lr is the frontier's to set
    forced = Frontier(load_config(FrontierConfig, overrides=[*where, "force_lr=true"]))
    assert forced.plan.sft.force_lr and all(run.cfg.force_lr for run in forced.plan.runs)
    with pytest.raises(ConfigError, match=r"sft.force_lr is set by the frontier .*set force_lr="):
        Frontier(load_config(FrontierConfig, overrides=[*where, "sft.force_lr=true"]))


def test_a_run_name_that_is_not_plain_is_refused_by_its_config_key(tmp_path):
    cfg = load_config(FrontierConfig, overrides=["name=a/b", f"runs_dir={tmp_path}"])
    with pytest.raises(RlhfkitError, match=r"^name 'a/b' is not a plain run name: .* runs_dir \("):
        Frontier(cfg)


def test_a_missing_model_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^rlhfkit frontier needs model=PATH"):
        Frontier(load_config(FrontierConfig, overrides=[f"runs_dir={tmp_path}"]))
    nowhere = [f"runs_dir={tmp_path}", f"model={tmp_path / 'nope'}"]
    with pytest.raises(RlhfkitError, match=r"model directory .*nope does not exist"):
        Frontier(load_config(FrontierConfig, overrides=nowhere))
    assert list(tmp_path.iterdir()) == []
