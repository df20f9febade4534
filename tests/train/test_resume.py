"""Kill a training run for real (SIGKILL, mid-run) and resume it: the final weights must be
bitwise identical to those of a run that was never interrupted."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.arith import ArithTask
from tests.train.conftest import length_reward_spec

from .test_reward import gold_ranking, write_jsonl

# One thread: float sums are reduced in the same order in every process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def rlhfkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlhfkit", *args]


def complete_checkpoints(run: Path) -> list[Path]:
    return sorted(
        p for p in (run / "checkpoints").glob("step_*") if (p / "checkpoint.json").is_file()
    )


def kill_and_resume(command: list[str], runs: Path) -> None:
    """Run `command` uninterrupted as `full` and, at the same time, as `killed`, SIGKILLed as
    soon as its first checkpoint is complete; then resume `killed` to the end."""
    logs = {name: open(runs.parent / f"{name}.log", "w") for name in ("full", "killed", "resumed")}
    full = subprocess.Popen(
        [*command, "--name", "full"], env=ENV, stdout=logs["full"], stderr=subprocess.STDOUT
    )
    killed = subprocess.Popen(
        [*command, "--name", "killed"], env=ENV, stdout=logs["killed"], stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while (
        not complete_checkpoints(runs / "killed")
        and killed.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    # -SIGKILL: it died by the signal; had it finished first, the run would be too short to test
    assert killed.wait() == -signal.SIGKILL, (runs.parent / "killed.log").read_text()
    assert not (runs / "killed" / "final").exists()
    assert full.wait() == 0, (runs.parent / "full.log").read_text()
    resumed = subprocess.run(
        [*command, "--name", "killed", "--resume"],
        env=ENV,
        stdout=logs["resumed"],
        stderr=subprocess.STDOUT,
    )
    assert resumed.returncode == 0, (runs.parent / "resumed.log").read_text()
    for log in logs.values():
        log.close()


def assert_same_run(runs: Path, max_steps: int) -> None:
    full = load_file(runs / "full" / "final" / "model.safetensors")
    resumed = load_file(runs / "killed" / "final" / "model.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[name], resumed[name]) for name in full)
    # the metrics log has every step once, with the same losses as the uninterrupted run (a
    # policy run's starting evaluation is step 0, logged once, not again on resume)
    losses = {}
    for name in ("full", "killed"):
        rows = [
            json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()
        ]
        assert sum(row["step"] == 0 for row in rows) <= 1
        rows = [row for row in rows if row["step"] > 0]
        assert [row["step"] for row in rows] == list(range(1, max_steps + 1))
        losses[name] = [row["loss"] for row in rows]
    assert losses["full"] == losses["killed"]


def test_sft_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    examples = ArithTask().sft_examples(300, random.Random(0))
    data = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    )
    runs, steps = tmp_path / "runs", 60
    kill_and_resume(
        rlhfkit(
            "sft",
            f"model={tiny_model_dir}",
            f"train_data={data}",
            f"max_steps={steps}",
            "batch_size=16",
            "warmup_steps=5",
            "save_every=5",
            "progress=false",
            "tensorboard=false",
            "sample_every=0",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_reward_model_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    data = write_jsonl(
        tmp_path / "rankings.jsonl", [gold_ranking(p, rng) for p in AdviceTask().prompts(40, rng)]
    )
    runs, steps = tmp_path / "runs", 30
    kill_and_resume(
        rlhfkit(
            "rm",
            f"model={tiny_model_dir}",
            f"train_data={data}",
            f"max_steps={steps}",
            "batch_size=4",
            "warmup_steps=3",
            "save_every=5",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_dpo_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # precompute_ref: the resumed run rebuilds its reference table, which must match bit for bit
    rng = random.Random(0)
    data = write_jsonl(
        tmp_path / "rankings.jsonl", [gold_ranking(p, rng) for p in AdviceTask().prompts(40, rng)]
    )
    runs, steps = tmp_path / "runs", 30
    kill_and_resume(
        rlhfkit(
            "dpo",
            f"model={tiny_model_dir}",
            f"train_data={data}",
            f"max_steps={steps}",
            "batch_size=4",
            "warmup_steps=3",
            "lr=3e-3",
            "save_every=5",
            "precompute_ref=true",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_grpo_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    runs, steps = tmp_path / "runs", 10
    kill_and_resume(
        rlhfkit(
            "grpo",
            f"model={tiny_model_dir}",
            "task=arith",
            f"reward={length_reward_spec(tmp_path)}",
            "train_prompts=64",
            "eval_prompts=4",
            "eval_max_new_tokens=4",
            "prompts_per_step=4",
            "group_size=4",
            "mini_batch_size=8",
            "mu=2",
            "max_new_tokens=12",
            f"max_steps={steps}",
            "save_every=2",
            "beta=0.1",
            "lr=1e-2",
            "warmup_steps=1",
            "eval_every=100",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_ppo_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    runs, steps = tmp_path / "runs", 8
    kill_and_resume(
        rlhfkit(
            "ppo",
            f"model={tiny_model_dir}",
            "task=advice",
            f"reward={length_reward_spec(tmp_path)}",
            "critic_init=policy",
            "train_prompts=64",
            "eval_prompts=4",
            "eval_max_new_tokens=4",
            "prompts_per_step=8",
            "mini_batch_size=4",
            "ppo_epochs=2",
            "max_new_tokens=12",
            f"max_steps={steps}",
            "save_every=2",
            "kl_target=0.5",
            "lr=1e-2",
            "critic_lr=1e-2",
            "warmup_steps=1",
            "eval_every=100",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_raft_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    runs, rounds = tmp_path / "runs", 10
    kill_and_resume(
        rlhfkit(
            "raft",
            f"model={tiny_model_dir}",
            "task=arith",
            f"reward={length_reward_spec(tmp_path)}",
            "require_correct=false",
            "train_prompts=64",
            "eval_prompts=4",
            "eval_max_new_tokens=4",
            "prompts_per_round=4",
            "samples_per_prompt=4",
            "epochs_per_round=2",
            "mini_batch_size=2",
            "max_new_tokens=12",
            f"max_steps={rounds}",
            "save_every=2",
            "lr=1e-2",
            "warmup_steps=1",
            "eval_every=100",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, rounds)


def test_online_dpo_killed_and_resumed_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    # iterative: checkpoints fall inside pools (refresh every 3 steps, save every 2), and the
    # simulated annotator's noise must continue where it stopped
    runs, steps = tmp_path / "runs", 10
    kill_and_resume(
        rlhfkit(
            "online-dpo",
            f"model={tiny_model_dir}",
            "task=advice",
            "labeller=annotator",
            "regime=iterative",
            "refresh_every=3",
            "samples_per_prompt=3",
            "prompts_per_step=4",
            "train_prompts=64",
            "eval_prompts=4",
            "eval_max_new_tokens=4",
            "max_new_tokens=12",
            f"max_steps={steps}",
            "save_every=2",
            "lr=1e-2",
            "warmup_steps=1",
            "eval_every=100",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
        ),
        runs,
    )
    assert_same_run(runs, steps)


def test_sigterm_stops_a_run_as_ctrl_c_does_and_it_resumes(tiny_model_dir, tmp_path):
    # a scheduler preempting the job sends SIGTERM: one line, status 143, the lock released and
    # the checkpoints kept, and --resume goes on to the end
    examples = ArithTask().sft_examples(100, random.Random(0))
    data = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": e.prompt, "completion": e.completion} for e in examples]
    )
    runs = tmp_path / "runs"
    command = rlhfkit(
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "max_steps=100",
        "save_every=2",
        "progress=false",
        "tensorboard=false",
        "sample_every=0",
        "--runs-dir",
        str(runs),
    )
    stopped = subprocess.Popen(command, env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not complete_checkpoints(runs / "sft") and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped.send_signal(signal.SIGTERM)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 143, err
    *_, said, stopped_line = err.strip().splitlines()
    assert stopped_line == "terminated (SIGTERM)"
    assert said.startswith(f"warning: {runs / 'sft'} continues from {runs / 'sft' / 'checkpoints'}")
    assert said.endswith("with the same command and --resume")
    assert not (runs / "sft" / "run.lock").exists() and complete_checkpoints(runs / "sft")
    resumed = subprocess.run(
        [*command, "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (runs / "sft" / "final" / "config.json").is_file()
