"""Checkpoints and --resume under torchrun: a 2-process job killed with SIGKILL after it wrote a
checkpoint, then resumed, ends bitwise equal to the job that was never stopped (losses of every
step, final weights); on another number of processes a run continues and says so."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from rlhfkit.runtime.checkpoint import latest_checkpoint
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.reward import RewardConfig, train_reward_model
from tests.distributed.ranks import TOLERANCE, close, max_weight_difference, run_on_ranks
from tests.distributed.test_reward import rankings  # noqa: F401 (a fixture)
from tests.distributed.test_sft import arith_data  # noqa: F401 (a fixture)

RESUME_WARNING = "not bitwise"
# the in-process runs: 4 steps of 2 micro-batches of 5 prompts, a checkpoint after step 2
FOUR_STEPS = dict(
    batch_size=5,
    grad_accum=2,
    max_steps=4,
    lr=1e-3,
    warmup_steps=1,
    save_every=2,
    progress=False,
    tensorboard=False,
)


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
            env={**os.environ, "OMP_NUM_THREADS": "1"},
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


def _whole_then_resumed(train, cfg, whole: str, stopped: str, single: str):
    """On every rank: the whole run; a copy of it stopped after its checkpoint (rank 0 copies),
    resumed; and a single process's run stopped likewise, resumed here. Losses of each."""
    losses = [train(cfg, RunDir(Path(whole))).train_losses]
    if dist.get_rank() == 0:
        shutil.copytree(whole, stopped, ignore=shutil.ignore_patterns("final"))
    dist.barrier()
    losses.append(train(cfg, RunDir(Path(stopped)), resume=True).train_losses)
    losses.append(train(cfg, RunDir(Path(single)), resume=True).train_losses)
    return losses


def _resumes_on_two_processes(train, cfg, tmp_path: Path) -> tuple[RunDir, list[float]]:
    """A 2-process run resumed from its checkpoint equals the whole run bitwise; a single
    process's run resumed on 2 processes ends within 1e-5 of its uninterrupted end. Returns the
    whole 2-process run and its losses."""
    single = prepare_run_dir(tmp_path / "single", resume=False, overwrite=False)
    single_losses = train(cfg, single).train_losses
    single_on_two = _stopped_copy(single, tmp_path / "single_on_two")
    whole = prepare_run_dir(tmp_path / "whole", resume=False, overwrite=False)
    whole_losses, resumed_losses, from_single = run_on_ranks(
        2,
        _whole_then_resumed,
        train,
        cfg,
        str(whole.root),
        str(tmp_path / "resumed"),
        str(single_on_two.root),
    )
    assert resumed_losses == whole_losses[2:]
    _bitwise_equal_runs(whole.root, tmp_path / "resumed")
    assert all(close(a, b) for a, b in zip(from_single, single_losses[2:]))
    ends = [load_file(run.final / "model.safetensors") for run in (single, single_on_two)]
    assert max_weight_difference(*ends) < TOLERANCE
    return whole, whole_losses


def _stopped_copy(run: RunDir, to: Path) -> RunDir:
    """`run` as it stood after its checkpoint: a copy without the final model."""
    shutil.copytree(run.root, to, ignore=shutil.ignore_patterns("final"))
    return RunDir(to)


def _bitwise_equal_runs(a: Path, b: Path) -> None:
    assert [r["loss"] for r in read_metrics(a / "metrics.jsonl")] == [
        r["loss"] for r in read_metrics(b / "metrics.jsonl")
    ]
    weights_a, weights_b = (
        load_file(a / "final" / "model.safetensors"),
        load_file(b / "final" / "model.safetensors"),
    )
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_reward_model_resumes_on_two_processes_and_on_one(
    tiny_model_dir,
    rankings,  # noqa: F811
    tmp_path,
    capfd,
):
    cfg = RewardConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        num_heads=2,
        centering_coef=0.1,
        imitation_coef=0.1,  # its LM head is a trainer extra of the checkpoint
        **FOUR_STEPS,
    )
    whole, whole_losses = _resumes_on_two_processes(train_reward_model, cfg, tmp_path)

    # the 2-process checkpoint, resumed by one process: it continues, and says it is not bitwise
    capfd.readouterr()
    one = train_reward_model(cfg, _stopped_copy(whole, tmp_path / "one"), resume=True)
    assert RESUME_WARNING in capfd.readouterr().err
    assert all(close(a, b) for a, b in zip(one.train_losses, whole_losses[2:]))


def test_dpo_resumes_on_two_processes(tiny_model_dir, rankings, tmp_path):  # noqa: F811
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        nll_weight=0.1,
        **FOUR_STEPS,
    )
    _resumes_on_two_processes(train_dpo, cfg, tmp_path)
