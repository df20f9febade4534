import json
import subprocess

from rlhfkit.runtime.provenance import (
    STARTS_FILE,
    cpu_description,
    first_command_name,
    git_commit,
    latest_start,
    record_start,
    start_line,
    start_record,
    started_by,
)

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile
"""


def test_the_cpu_is_named_with_the_flags_that_change_its_kernels():
    assert cpu_description(CPUINFO) == {
        "cpu": "Intel(R) Xeon(R) Processor",
        "cpu_flags": ["avx2", "avx512f", "amx_bf16"],
    }


def test_the_commit_of_a_checkout_and_whether_it_has_changes(tmp_path):
    assert git_commit(tmp_path) == (None, None)  # not a checkout: nothing to name
    git = ["git", "-C", str(tmp_path), "-c", "user.name=a", "-c", "user.email=a@b"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (tmp_path / "sub").mkdir()
    assert git_commit(tmp_path / "sub") == (head, False)  # found from a folder inside
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == (head, True)


def test_each_start_appends_a_record_and_the_latest_is_quoted(tmp_path):
    assert latest_start(tmp_path) is None and first_command_name(tmp_path) is None
    with started_by("rlhfkit sft model=m"):
        first = start_record(command_name="sft")
    assert start_record()["command"] == ""  # outside: no command named
    record_start(tmp_path, first)
    record_start(tmp_path, {**first, "command": "rlhfkit sft model=m --resume"})
    lines = (tmp_path / STARTS_FILE).read_text().splitlines()
    assert [json.loads(line)["command"] for line in lines] == [
        "rlhfkit sft model=m",
        "rlhfkit sft model=m --resume",
    ]
    assert latest_start(tmp_path)["command"].endswith("--resume")
    assert first_command_name(tmp_path) == "sft"  # the command that made the run
    assert first["started"].endswith("Z") and first["world_size"] == 1
    assert {"rlhfkit", "git_commit", "torch", "transformers", "host", "cpu", "threads"} <= set(
        first
    )


def test_a_report_line_names_code_time_and_machine():
    record = {
        "started": "2026-12-06T08:00:05Z",
        "rlhfkit": "0.1.0",
        "git_commit": "1a2b3c4d5e6f",
        "git_dirty": True,
        "cpu": "Intel(R) Xeon(R) Processor",
        "cpu_flags": ["avx2", "avx512f"],
        "gpu": None,
        "threads": 2,
        "world_size": 1,
        "torch": "2.13.0",
        "transformers": "4.57.0",
    }
    assert start_line(record) == (
        "rlhfkit 0.1.0 (commit 1a2b3c4, with uncommitted changes), 2026-12-06 08:00:05 UTC, "
        "Intel(R) Xeon(R) Processor (avx2, avx512f), 2 threads, torch 2.13.0, "
        "transformers 4.57.0"
    )
    on_gpus = {**record, "git_commit": None, "gpu": "NVIDIA H200", "world_size": 8}
    assert start_line(on_gpus).startswith("rlhfkit 0.1.0, 2026-12-06 08:00:05 UTC, NVIDIA H200, ")
    assert ", 8 processes," in start_line(on_gpus)
