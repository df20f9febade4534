import subprocess
import sys
from datetime import timedelta

import pytest
import torch.distributed as dist

from rlhfkit.runtime import rank_errors
from rlhfkit.runtime.rank_errors import error_key, prints_error, rank_zero_error
from tests.distributed.ranks import free_port, torchrun_env

MESSAGE = "data.jsonl: row 3: field 'prompt': missing"


@pytest.fixture
def job_env():
    """A job's TCP store, hosted here as torchrun's agent hosts it, and the variables a rank
    sees."""
    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=5))
    yield {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    del store


def test_rank_zero_prints_and_a_rank_with_the_same_error_stays_quiet(job_env):
    assert prints_error(0, MESSAGE, job_env)
    assert not prints_error(1, MESSAGE, job_env)


def test_a_rank_whose_error_rank_zero_does_not_share_prints_it(job_env, monkeypatch):
    monkeypatch.setattr(rank_errors, "WAIT_FOR_RANK_ZERO_S", 0.2)
    assert prints_error(1, MESSAGE, job_env)  # rank 0 posted nothing: it has not failed
    assert prints_error(0, "another error", job_env)
    assert prints_error(1, MESSAGE, job_env)  # rank 0 failed otherwise: both lines count


def test_a_rank_waits_for_rank_zero_and_reads_its_message(job_env):
    store = rank_errors.job_store(job_env)
    key = error_key(job_env)
    assert rank_zero_error(store, key, wait_s=0.1) is None
    store.set(key, "late")
    assert rank_zero_error(store, key, wait_s=0.1) == "late"


def test_each_restart_has_its_own_key():
    assert error_key({}) != error_key({"TORCHELASTIC_RESTART_COUNT": "1"})


def test_without_a_store_to_reach_every_rank_prints():
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}  # nothing listens
    assert prints_error(1, MESSAGE, env)
    assert prints_error(1, MESSAGE, {})


def test_bad_input_under_torchrun_is_one_error_line(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "-m", "rlhfkit", "sft", "--runs-dir", str(tmp_path), "--name", "bad"]
        + [f"model={tmp_path / 'missing'}", f"train_data={tmp_path / 'missing.jsonl'}"],
        env=torchrun_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert lines == [f"error: model directory {tmp_path / 'missing'} does not exist"]
    assert "[rank" not in done.stderr  # no rank's traceback
