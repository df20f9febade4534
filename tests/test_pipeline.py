import json
import logging
import re
import shutil
import subprocess

import pytest

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.pipeline import Pipeline, stage_configs
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config
from tests.file_modules import ROOT, load_file_module

# the pipeline's stages in the order they run (`summary["stages"]`)
STAGES = (
    "data",
    "model",
    "sft",
    "collect",
    "reward model",
    "ppo",
    "grpo",
    "dpo",
    "raft",
    "evaluate",
)

TINY = [
    "data.sft_rows_per_task=300",
    "data.eval_rows_per_task=10",
    "data.eval_prompts_per_task=8",
    "model.vocab_size=300",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "sft.max_steps=6",
    "sft.batch_size=8",
    "sft.eval_every=0",
    "sft.sample_every=0",
    "sft.save_every=0",
    "sft.progress=false",
    "sft.tensorboard=false",
    "collect.train_prompts=24",
    "collect.heldout_prompts=8",
    "collect.responses_per_prompt=4",
    "collect.max_new_tokens=16",
    "rm.max_steps=3",
    "rm.batch_size=4",
    "rm.save_every=0",
    "rm.progress=false",
    "rm.tensorboard=false",
    "ppo.max_steps=2",
    "ppo.prompts_per_step=8",
    "ppo.mini_batch_size=8",
    "ppo.ppo_epochs=1",
    "ppo.max_new_tokens=12",
    "ppo.progress=false",
    "ppo.tensorboard=false",
    "grpo.max_steps=2",
    "grpo.prompts_per_step=4",
    "grpo.group_size=4",
    "grpo.mini_batch_size=16",
    "grpo.max_new_tokens=12",
    "grpo.progress=false",
    "grpo.tensorboard=false",
    "dpo.max_steps=2",
    "dpo.batch_size=4",
    "dpo.progress=false",
    "dpo.tensorboard=false",
    "raft.max_steps=2",
    "raft.prompts_per_round=4",
    "raft.samples_per_prompt=4",
    "raft.max_new_tokens=12",
    "raft.progress=false",
    "raft.tensorboard=false",
    "eval_max_new_tokens=12",
    "advice_eval_samples=1",
    "arith_eval_samples=2",
    "report_samples=2",
]


# every key of a stage's section that the pipeline fills in itself
SHARED = ("seed", "device", "max_nonfinite_skips", "force_lr")
FILLED = {
    "sft": ("model", "train_data", "eval_data", *SHARED),
    "rm": ("model", "train_data", "eval_data", *SHARED),
    "ppo": ("model", "reward_model", "task", "eval_data", "eval_max_new_tokens", *SHARED),
    "grpo": ("model", "task", "eval_data", "eval_max_new_tokens", *SHARED),
    "dpo": ("model", "train_data", "eval_data", *SHARED),
    "raft": ("model", "task", "eval_data", "eval_max_new_tokens", *SHARED),
}
FILLED_KEYS = [f"{stage}.{name}" for stage, names in FILLED.items() for name in names]
# keys the pipeline takes from its own: a user sets those there instead
FROM_PIPELINE = {
    "seed": "12345",
    "device": "cpu",
    "max_nonfinite_skips": "5",
    "force_lr": "true",
    "eval_max_new_tokens": "7",
}
OTHER_TASK = {"ppo": "arith", "grpo": "advice", "raft": "advice"}


def test_stage_configs_wire_each_stage_to_the_outputs_of_the_earlier_ones(tmp_path):
    cfg = load_config(
        PipelineConfig,
        overrides=[
            "seed=3",
            "device=cpu",
            "max_nonfinite_skips=8",
            "force_lr=true",
            "eval_max_new_tokens=9",
            "sft.max_steps=6",
            "ppo.lr=1e-3",
        ],
    )
    stages = stage_configs(cfg, tmp_path)
    assert len(FILLED_KEYS) == 46
    sft_final = str(tmp_path / "sft" / "final")
    assert stages.sft.model == str(tmp_path / "base_model") and stages.sft.max_steps == 6
    assert stages.sft.train_data == str(tmp_path / "data" / "sft.jsonl")
    assert stages.rm.model == stages.ppo.model == stages.dpo.model == stages.raft.model == sft_final
    rankings = str(tmp_path / "collect" / "rankings.jsonl")
    assert stages.rm.train_data == stages.dpo.train_data == rankings
    assert stages.ppo.reward_model == str(tmp_path / "rm" / "final") and stages.ppo.lr == 1e-3
    assert (stages.ppo.task, stages.grpo.task, stages.raft.task) == ("advice", "arith", "arith")
    assert stages.grpo.eval_data == str(tmp_path / "data" / "arith_eval_prompts.jsonl")
    for section, keys in FILLED.items():
        stage = getattr(stages, section)
        assert (stage.seed, stage.device, stage.force_lr) == (3, "cpu", True)
        assert stage.max_nonfinite_skips == 8  # the job's own, not the trainer's default 3
        if "eval_max_new_tokens" in keys:
            assert stage.eval_max_new_tokens == 9


@pytest.mark.parametrize("key", FILLED_KEYS)
def test_a_user_setting_of_a_filled_key_is_refused_by_name(tmp_path, key):
    stage, name = key.split(".")
    value = OTHER_TASK[stage] if name == "task" else FROM_PIPELINE.get(name, "somewhere")
    cfg = load_config(PipelineConfig, overrides=[f"{key}={value}", f"runs_dir={tmp_path}"])
    with pytest.raises(ConfigError) as caught:
        Pipeline(cfg)
    message = str(caught.value)
    assert message.startswith(f"{key} is set by the pipeline") and len(message.splitlines()) == 1
    if name in FROM_PIPELINE:
        assert message.endswith(f"set {name}= instead")
    assert not (tmp_path / "demo").exists()  # refused before anything was written


@pytest.mark.parametrize("name", ["../x", ".hidden", ""])
def test_a_run_name_that_is_not_plain_is_refused_by_its_config_key(tmp_path, name):
    # the pipeline has no --name or --runs-dir: the error names the keys a user sets
    cfg = load_config(PipelineConfig, overrides=[f"name='{name}'", f"runs_dir={tmp_path}"])
    with pytest.raises(RlhfkitError) as caught:
        Pipeline(cfg)
    assert str(caught.value).startswith(
        f"name {name!r} is not a plain run name: it must be a folder name inside runs_dir ("
    )


def test_a_pretrained_base_model_has_every_stage_lr_checked_by_its_key(
    smollm2_config_dir, tmp_path
):
    where = [f"model.base_model={smollm2_config_dir}", f"runs_dir={tmp_path}"]
    # the demo's rates suit its tiny model, trained from scratch: SFT's 2e-3 is the first refused
    with pytest.raises(RlhfkitError) as caught:
        Pipeline(load_config(PipelineConfig, overrides=where))
    message = str(caught.value)
    assert message.startswith("sft.lr=0.002 is far too large") and "\n" not in message
    assert "--force-lr" in message and "force_lr=true" in message
    sensible = [*where, *(f"{stage}.lr=1e-6" for stage in ("sft", "rm", "grpo", "dpo", "raft"))]
    with pytest.raises(RlhfkitError, match=r"^ppo\.critic_lr=0\.0001 is far too large"):
        Pipeline(load_config(PipelineConfig, overrides=sensible))
    with pytest.raises(RlhfkitError, match=r"^ppo\.lr=0\.001 is far too large"):
        Pipeline(load_config(PipelineConfig, overrides=[*sensible, "ppo.lr=1e-3"]))
    assert not (tmp_path / "demo").exists()  # refused before anything was written
    Pipeline(load_config(PipelineConfig, overrides=[*sensible, "ppo.critic_lr=1e-5"]))
    Pipeline(load_config(PipelineConfig, overrides=[*where, "force_lr=true"]))


def test_a_failed_rerun_leaves_the_earlier_run_as_it_was(tmp_path, monkeypatch):
    earlier = tmp_path / "demo"
    earlier.mkdir()
    (earlier / "config.yaml").write_text("seed: 0\n")
    (earlier / "summary.json").write_text("{}")
    where = [f"runs_dir={tmp_path}", *TINY]
    # a base model that is not there is refused before anything is written or moved
    with pytest.raises(RlhfkitError, match=r"model directory .*nope does not exist"):
        Pipeline(
            load_config(PipelineConfig, overrides=[*where, f"model.base_model={tmp_path}/nope"])
        )
    assert sorted(p.name for p in earlier.iterdir()) == ["config.yaml", "summary.json"]

    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C in the second stage, before any model is saved

    monkeypatch.setattr(Pipeline, "make_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(load_config(PipelineConfig, overrides=where)).run_all()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # moved back, nothing beside it
    assert sorted(p.name for p in earlier.iterdir()) == ["config.yaml", "summary.json"]
    assert (earlier / "config.yaml").read_text() == "seed: 0\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs")
    cfg = load_config(PipelineConfig, overrides=[f"runs_dir={tmp_path}", "name=tiny", *TINY])
    logger = logging.getLogger("rlhfkit")
    logger.setLevel(logging.INFO)  # as the command line sets it: INFO reaches the job's log.txt
    try:
        return tmp_path, Pipeline(cfg).run_all()
    finally:
        logger.setLevel(logging.NOTSET)


def test_pipeline_runs_every_stage_and_writes_the_table_numbers(tiny_run):
    tmp_path, summary = tiny_run
    stages = list(summary["stages"])
    assert stages == list(STAGES)
    assert summary["ppo"]["steps"] == 2 and summary["grpo"]["steps"] == 2
    advice, arith = summary["eval"]["advice"], summary["eval"]["arith"]
    # greedy answers are compared once per distinct prompt, sampled ones all
    prompts = (tmp_path / "tiny" / "data" / "advice_eval_prompts.jsonl").read_text().splitlines()
    distinct = len({json.loads(row)["prompt"] for row in prompts})
    for method in ("ppo", "dpo"):
        for key, n in (("win_rate_greedy", distinct), ("win_rate_sampled", 8)):
            assert (
                advice[method][f"{key}_low"] <= advice[method][key] <= advice[method][f"{key}_high"]
            )
            assert advice[method][f"{key}_n"] == n
        assert (
            advice[method]["proxy_sampled_n"] == 8 and advice[method]["kl_k1_per_sequence_n"] == 8
        )
    # the SFT model is the reference: its KL to itself is zero (up to cached vs full-pass rounding)
    assert (
        abs(advice["sft"]["kl_k1_per_sequence"]) < 1e-5
        and abs(arith["sft"]["kl_k3_per_token"]) < 1e-6
    )
    assert summary["raft"]["rounds"] == 2 and 0.0 <= arith["raft"]["greedy_accuracy"] <= 1.0
    # the RL stages leave evaluation to the evaluate stage: no evaluation lines in their logs
    for stage in ("ppo", "grpo", "raft"):
        lines = (tmp_path / "tiny" / stage / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 2 and not any("eval_" in line for line in lines)
    assert set(arith["grpo"]) >= {"pass@1", "pass@2", "maj@1", "maj@2"}
    assert arith["grpo"]["pass@1"] <= arith["grpo"]["pass@2"]
    assert summary["dpo"]["steps"] == 2 and summary["dpo"]["loss"] == "plackett_luce"
    on_disk = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert all(on_disk[key] == summary[key] for key in ("ppo", "grpo", "dpo", "raft", "eval"))
    assert [list(item) for item in on_disk["samples"]["advice"]] == [
        ["prompt", "sft", "ppo", "dpo"]
    ] * 2
    for task_samples in on_disk["samples"].values():  # distinct prompts, as rlhfkit eval shows
        shown = [item["prompt"] for item in task_samples]
        assert len(set(shown)) == len(shown)
    assert (tmp_path / "tiny" / "report.html").stat().st_size > 10_000
    # what made the numbers: Pipeline(cfg) called directly names no command, and says so
    assert on_disk["started"]["command"] == "" and on_disk["started"]["world_size"] == 1
    assert "class='made-by'>rlhfkit " in (tmp_path / "tiny" / "report.html").read_text()
    # every stage's messages in the job's log: the data reports of SFT and the reward model
    logged = (tmp_path / "tiny" / "log.txt").read_text()
    assert "INFO rlhfkit.train.sft: train data " in logged
    assert "INFO rlhfkit.train.reward: train data " in logged
    for stage in ("sft", "rm", "ppo", "grpo", "dpo", "raft"):
        assert (tmp_path / "tiny" / stage / "final" / "config.json").exists()


def _script(name: str):
    return load_file_module(ROOT / "scripts" / f"{name}.py", name)


@pytest.mark.parametrize("stages", ["ppo", "raft", "rm+ppo"])
def test_a_stage_rerun_gives_the_pipeline_numbers_at_the_pipeline_step_count(tiny_run, stages):
    # scripts/stage_rerun.py, how the demo's settings were chosen: the stage again on a copy of
    # the run's inputs, longer, and a checkpoint at the pipeline's 2 steps replays the pipeline's
    # own stage (the learning rate does not depend on max_steps), so its numbers are the table's;
    # with "rm+ppo" the reward model is trained again first, the same one, so PPO's are too
    tmp_path, summary = tiny_run
    stage = stages.split("+")[-1]
    overrides = [f"{stage}.max_steps=3", f"{stage}.save_every=2", f"{stage}.keep_last=3"]
    rows = _script("stage_rerun").rerun(tmp_path / "tiny", stages, overrides)
    assert {row["stage"] for row in rows} == {stages}
    assert [row["policy"] for row in rows] == ["step_00000002", "final"]
    if stage == "ppo":
        table = summary["eval"]["advice"]["ppo"]
        for key in ("win_rate_greedy", "win_rate_sampled", "win_rate_sampled_low"):
            assert rows[0][key] == table[key]
        distinct = table["win_rate_greedy_n"]
        changed = rows[0]["greedy_better"] + rows[0]["greedy_worse"]
        assert changed == round(distinct * (1 - table["win_rate_greedy_ties"]))
    else:
        arith = summary["eval"]["arith"]
        gain = 100 * (arith["raft"]["greedy_accuracy"] - arith["sft"]["greedy_accuracy"])
        assert rows[0]["greedy_gain_points"] == round(gain, 6)
    rerun_dir = tmp_path / f"tiny-rerun-{stages.replace('+', '-')}"
    assert len((rerun_dir / stage / "metrics.jsonl").read_text().splitlines()) == 3
    assert len((rerun_dir / "rerun.jsonl").read_text().splitlines()) == 2
    # the run itself is as the pipeline left it
    assert len((tmp_path / "tiny" / stage / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_stage_rerun_refuses_a_chain_that_does_not_end_with_an_rl_stage():
    chain = _script("stage_rerun").stage_chain
    assert chain("rm+ppo") == ["rm", "ppo"]
    for bad in ("rm", "ppo+rm", "rm+sft"):
        with pytest.raises(ValueError, match="joined by"):
            chain(bad)


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _browser() is None,
    reason="no chromium: `make test` installs Debian's package where it can (root + apt)",
)
def test_the_report_opens_in_a_browser_with_every_plot_and_table(tiny_run):
    tmp_path, _ = tiny_run
    report = tmp_path / "tiny" / "report.html"
    # --dump-dom prints the page after its scripts ran: the report's own check writes how many
    # of its plots decoded into <body data-plots-loaded="ok/total">
    dom = subprocess.run(
        [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            "--virtual-time-budget=10000",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    loaded = re.search(r'data-plots-loaded="(\d+)/(\d+)"', dom)
    assert loaded, "the report's load check did not run"
    # one frontier, two over-optimisation plots (PPO, GRPO), training curves of six stages
    assert loaded.groups() == ("9", "9")
    assert dom.count("<table>") == 5  # stages, advice and arith evaluation, two side-by-side tables
    for heading in (
        "Stages",
        "Held-out evaluation",
        "Reward-KL frontier",
        "Over-optimisation",
        "Training curves",
        "Side by side",
    ):
        assert f"<h2>{heading}" in dom
    assert 'id="check"></p>' in dom  # the check wrote no failure message


def test_the_configs_filled_keys_are_the_ones_the_pipeline_fills():
    assert {s: set(keys) for s, keys in PipelineConfig.FILLED.items()} == {
        s: set(keys) for s, keys in FILLED.items()
    }


@pytest.mark.parametrize("key", ["sft.seed", "ppo.device", "grpo.eval_max_new_tokens"])
def test_a_filled_key_given_at_its_default_is_refused_too(tmp_path, key):
    from rlhfkit.pipeline import check_stage_keys
    from rlhfkit.runtime.config import given_keys

    default = {"sft.seed": "0", "ppo.device": "auto", "grpo.eval_max_new_tokens": "64"}[key]
    overrides = [f"{key}={default}", "seed=1", "device=cpu", "eval_max_new_tokens=32"]
    cfg = load_config(PipelineConfig, overrides=[*overrides, f"runs_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=f"^{key} is set by the pipeline"):
        check_stage_keys(cfg, given_keys(overrides=overrides))
    # given at the value the pipeline fills, it is accepted
    name = key.split(".")[1]
    same = [*overrides[1:], f"{key}=" + {"seed": "1", "device": "cpu"}.get(name, "32")]
    cfg = load_config(PipelineConfig, overrides=[*same, f"runs_dir={tmp_path}"])
    check_stage_keys(cfg, given_keys(overrides=same))


@pytest.mark.parametrize(
    "settings, refusal",
    [
        (["grpo.mini_batch_size=7"], "mini_batch_size=7 does not divide the rollout"),
        # these two were refused only when their stage's trainer built its models
        (["raft.reference_model=ref"], "reference_model=ref: this run loads no reference"),
        (["grpo.beta=0", "grpo.reference_model=ref"], "reference_model=ref: this run loads no"),
        (["ppo.lora_r=4", "ppo.reference_model=ref"], "reference_model=ref with lora_r=4"),
        # and a stage's reward file when its stage started, the reward model's objective when
        # it read the rankings
        (["rm.objective=process", "rm.num_heads=1"], "rm.objective=process: the pipeline trains"),
        (
            ["grpo.supervision=outcome", "grpo.reward=nofile.py:f"],
            "reward function 'nofile.py:f': no file nofile.py",
        ),
    ],
)
def test_a_stage_setting_its_trainer_refuses_is_refused_before_the_first_stage(
    tmp_path, settings, refusal
):
    # refused when the pipeline starts, not after SFT, collection, the reward model and PPO
    # have run and left a half-written run folder
    from rlhfkit.pipeline import check_stage_keys

    cfg = load_config(PipelineConfig, None, [f"runs_dir={tmp_path / 'runs'}", *settings])
    for check in (check_stage_keys, Pipeline):  # --print-config, and the run
        with pytest.raises(RlhfkitError, match=re.escape(refusal)):
            check(cfg)
    assert not any(tmp_path.iterdir())


def test_the_collection_prints_as_one_readable_line():
    from rlhfkit.pipeline_table import collection_line

    line = collection_line(
        {
            "temperature": 1.1348,
            "agreement": 0.72083,
            "bayes_limit": 0.79716,
            "pairs": 44723,
            "rankings": 1600,
        }
    )
    assert line == (
        "1600 rankings (44723 pairs) by the simulated annotator at T = 1.135: agreement 72.1% "
        "between annotators (Bayes limit 79.7%)"
    )
