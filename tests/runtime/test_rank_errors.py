import re
import subprocess
import sys
from datetime import timedelta

import pytest
import torch.distributed as dist

from rlhfkit.errors import RlhfkitError, SampleError
from rlhfkit.runtime import rank_errors
from rlhfkit.runtime.rank_errors import error_key, error_kind, prints_error, rank_zero_error
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


def test_ranks_failing_on_their_own_samples_alike_print_one_line(job_env, monkeypatch):
    # a reward function that raises on every rank: each rank names a sample of its own
    monkeypatch.setattr(rank_errors, "WAIT_FOR_RANK_ZERO_S", 0.2)
    raised = "reward function 'rew.py:f' raised KeyError"
    zero = SampleError(f"{raised}: 'answer' on sample 0 ('Q: Gus has...')", kind=raised)
    one = SampleError(f"{raised}: 'answer' on sample 4 ('Q: Ann has...')", kind=raised)
    assert prints_error(0, error_kind(zero), job_env)
    assert not prints_error(1, error_kind(one), job_env)
    # another kind of failure on rank 1's samples is its own line
    other = "reward function 'rew.py:f' raised ValueError"
    assert prints_error(1, error_kind(SampleError(f"{other}: on sample 5", kind=other)), job_env)


def test_an_errors_kind_is_its_message_unless_it_names_a_sample():
    assert error_kind(RlhfkitError(MESSAGE)) == MESSAGE
    assert error_kind(SampleError(f"{MESSAGE} on sample 3", kind=MESSAGE)) == MESSAGE


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


def torchrun_error_lines(tmp_path, *arguments: str) -> tuple[list[str], str]:
    """`rlhfkit ARGUMENTS` on 2 ranks, which must fail: its `error` lines and its stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "-m", "rlhfkit", *arguments, "--runs-dir", str(tmp_path), "--name", "bad"],
        env=torchrun_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    return [line for line in done.stderr.splitlines() if line.startswith("error")], done.stderr


def test_bad_input_under_torchrun_is_one_error_line(tmp_path):
    lines, stderr = torchrun_error_lines(
        tmp_path, "sft", f"model={tmp_path / 'missing'}", f"train_data={tmp_path / 'missing.jsonl'}"
    )
    assert lines == [f"error: model directory {tmp_path / 'missing'} does not exist"]
    assert "[rank" not in stderr  # no rank's traceback


def test_a_reward_function_failing_on_every_ranks_samples_is_one_error_line(
    tiny_model_dir, tmp_path
):
    reward = tmp_path / "rew.py"
    reward.write_text("def always(prompts, responses, **columns):\n    raise KeyError('answer')\n")
    settings = "prompts_per_step=4 group_size=2 mini_batch_size=8 max_steps=1 max_new_tokens=4"
    lines, _ = torchrun_error_lines(
        tmp_path,
        "grpo",
        f"model={tiny_model_dir}",
        "task=arith",
        f"reward={reward}:always",
        "eval_every=-1",
        "progress=false",
        *settings.split(),
    )
    # rank 0's, naming the step's first sample; rank 1 failed alike on its samples 4-7
    assert len(lines) == 1, lines
    expected = rf"error: reward function '{re.escape(str(reward))}:always' raised KeyError: "
    assert re.fullmatch(expected + r"'answer' on sample 0 \('Q: .*'\)", lines[0]), lines
