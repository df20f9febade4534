"""Checkpoints and --resume under torchrun: a 2-process job killed with SIGKILL after it wrote a
checkpoint, then resumed, ends bitwise equal to the job that was never stopped (losses of every
step, final weights); on another number of processes a run continues and says so."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from rlhfkit.runtime.checkpoint import latest_checkpoint
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.reward import RewardConfig, train_reward_model
from rlhfkit.train.sft import SFTConfig, train_sft
from tests.distributed.ranks import (
    RESUME_WARNING,
    close,
    max_weight_difference,
    resumes_on_two_processes,
    stopped_copy,
    torchrun_env,
)
from tests.distributed.test_reward import THREE_STEPS, rankings  # noqa: F401 (a fixture)
from tests.distributed.test_sft import arith_data  # noqa: F401 (a fixture)

# the in-process runs: 4 steps of 2 micro-batches of 5 prompts, a checkpoint after step 2
FOUR_STEPS = {**THREE_STEPS, "max_steps": 4, "save_every": 2}


def _torchrun(tmp_path: Path, name: str, settings: list[str], *flags: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
    ]
    command += ["-m", "rlhfkit", "sft", "--runs-dir", str(tmp_path), "--name", name]
    with open(tmp_path / f"{name}.log", "a") as log:  # a file: a full pipe would block a job
        return subprocess.Popen(
            [*command, *settings, *flags],
            env=torchrun_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _finished(job: subprocess.Popen, log: Path) -> str:
    """The job's output once it exited with status 0."""
    assert job.wait(timeout=300) == 0, log.read_text()[-3000:]
    return log.read_text()


def _kill_job_after_checkpoint(job: subprocess.Popen, checkpoints: Path, log: Path) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own) as soon as the
    job's first checkpoint is complete."""
    deadline = time.monotonic() + 240
    while latest_checkpoint(checkpoints) is None:
        assert job.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    workers = psutil.Process(job.pid).children(recursive=True)
    job.send_signal(signal.SIGKILL)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    job.wait()  # torchrun is this process's child: reaped here, its status kept
    psutil.wait_procs(workers, timeout=30)


def test_a_killed_torchrun_job_resumes_bitwise(tiny_model_dir, arith_data, tmp_path):  # noqa: F811
    settings = [
        f"model={tiny_model_dir}",
        f"train_data={arith_data[0]}",
        "batch_size=7",
        "grad_accum=2",
        "max_steps=8",
        "lr=3e-3",
        "warmup_steps=1",
        "save_every=2",
        "keep_last=2",
        "progress=false",
        "tensorboard=false",
    ]
    whole = _torchrun(tmp_path, "whole", settings)  # the two jobs run side by side
    killed = _torchrun(tmp_path, "killed", settings)
    _kill_job_after_checkpoint(killed, tmp_path / "killed" / "checkpoints", tmp_path / "killed.log")
    _finished(whole, tmp_path / "whole.log")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "final").exists(), "the job ended before it was killed"

    resumed = _torchrun(tmp_path, "killed", settings, "--resume")
    output = _finished(resumed, tmp_path / "killed.log")
    assert RESUME_WARNING not in output  # the same number of processes: no warning

    losses = {
        name: [row["loss"] for row in read_metrics(tmp_path / name / "metrics.jsonl")]
        for name in ("whole", "killed")
    }
    assert len(losses["whole"]) == 8
    assert losses["killed"] == losses["whole"]  # every step, to the last bit
    final = {name: load_file(tmp_path / name / "final" / "model.safetensors") for name in losses}
    assert all(torch.equal(final["whole"][k], final["killed"][k]) for k in final["whole"])
    assert final["whole"].keys() == final["killed"].keys()

    # keep_last: the two newest checkpoints (steps 4 and 6), each rank's shard, no leftovers
    checkpoints = tmp_path / "whole" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_00000004", "step_00000006"]
    trainer = checkpoints / "step_00000006" / "trainer"
    assert sorted(path.name for path in trainer.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    saved = FileSystemReader(trainer).read_metadata().state_dict_metadata
    assert {"step", "rng.rank0", "rng.rank1", "extra.micro_index"} <= saved.keys()
    # rank 0's model files load with plain transformers
    model = AutoModelForCausalLM.from_pretrained(checkpoints / "step_00000006" / "model")
    started = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_weight_difference(model.state_dict(), started) > 1e-4


@pytest.mark.parametrize("lora_r", [0, 4])  # LoRA: the adapters and head are trainer extras
def test_reward_model_resumes_on_two_processes_and_on_one(
    tiny_model_dir,
    rankings,  # noqa: F811
    tmp_path,
    caplog,
    lora_r,
):
    cfg = RewardConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        num_heads=2,
        centering_coef=0.1,
        imitation_coef=0.1,  # its LM head is a trainer extra of the checkpoint
        lora_r=lora_r,
        **FOUR_STEPS,
    )
    whole, whole_losses = resumes_on_two_processes(train_reward_model, cfg, tmp_path)
    if lora_r:  # the checkpoint's model/ is the merged classifier, as a single process writes
        saved = load_file(whole.checkpoints / "step_00000002" / "model" / "model.safetensors")
        assert not any("lora" in key for key in saved) and "score.weight" in saved

    # the 2-process checkpoint, resumed by one process: it continues, and says it is not bitwise
    one = train_reward_model(cfg, stopped_copy(whole, tmp_path / "one"), resume=True)
    assert RESUME_WARNING in caplog.text
    assert all(close(a, b) for a, b in zip(one.train_losses, whole_losses[2:]))


@pytest.mark.parametrize("lora_r", [0, 4])  # LoRA: the checkpoint holds the adapters
def test_dpo_resumes_on_two_processes(tiny_model_dir, rankings, tmp_path, lora_r):  # noqa: F811
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        nll_weight=0.1,
        lora_r=lora_r,
        **FOUR_STEPS,
    )
    resumes_on_two_processes(train_dpo, cfg, tmp_path)


def test_sft_with_lora_resumes_on_two_processes(tiny_model_dir, arith_data, tmp_path):  # noqa: F811
    # the checkpoint's model/ holds the adapters, written by rank 0 from the gathered weights
    cfg = SFTConfig(model=str(tiny_model_dir), train_data=arith_data[0], lora_r=4, **FOUR_STEPS)
    whole, _ = resumes_on_two_processes(train_sft, cfg, tmp_path)
    assert (whole.checkpoints / "step_00000002" / "model" / "adapter_model.safetensors").is_file()
