"""The GPU benchmark's rlhfkit side, run end to end in its tiny CPU mode, so that it cannot rot
between the rare runs on a GPU: the orchestrator builds the assets, runs GRPO and DPO each in
its own process and writes a plausible result line per run. No timing is asserted."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.file_modules import load_file_module

GPU_BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def _module(name: str):
    """One of the benchmark's modules, under a name of its own (they import nothing local)."""
    return load_file_module(GPU_BENCH / f"{name}.py", f"gpu_bench_{name}")


@pytest.fixture(scope="module")
def bench():
    return _module("workloads"), _module("flops")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench-gpu")
    command = [sys.executable, str(GPU_BENCH / "bench_gpu.py"), "--tiny", "--device", "cpu"]
    command += ["--threads", "1", "--library", "rlhfkit", "--workload", "grpo", "dpo"]
    done = subprocess.run(
        [*command, "--out-dir", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {line["workload"]: line for line in lines}, (out / "table.md").read_text()


def test_each_run_writes_one_line_with_its_steps_and_derived_numbers(results, bench):
    lines, table = results
    workloads, flops = bench
    assert sorted(lines) == ["dpo", "grpo"]
    for name, line in lines.items():
        assert "error" not in line, line.get("error")
        warmup, timed = workloads.SMALL.steps(name)
        assert line["library"] == "rlhfkit" and line["steps_timed"] == timed
        assert len(line["loss_per_step"]) == warmup + timed
        assert all(math.isfinite(loss) for loss in line["loss_per_step"])
        assert line["median_s_per_step"] > 0 and line["peak_gpu_memory_gib"] is None
        count = flops.flops_per_step(name, flops.TINY, line["flop_tokens_per_step"])
        assert line["flops_per_step"] == pytest.approx(count)
        assert line["mfu"] == pytest.approx(count / line["median_s_per_step"] / 790e12)
        assert f"| {name} | rlhfkit | {line['median_s_per_step']:.3f} |" in table


def test_grpo_samples_every_token_of_every_response(results, bench):
    # the assets' model never samples a special token, so no response stops early
    line, sizes = results[0]["grpo"], bench[0].SMALL
    assert line["completion_tokens_per_step"] == sizes.prompts * sizes.group * sizes.new_tokens
    assert line["prompt_tokens_per_step"] > sizes.prompts * sizes.group  # several tokens each
    assert line["flop_tokens_per_step"] == (
        line["prompt_tokens_per_step"] + line["completion_tokens_per_step"]
    )
    assert line["generation_s_per_step_median"] > 0


def test_dpo_trains_exact_length_pairs_from_the_reference_point(results, bench):
    line, sizes = results[0]["dpo"], bench[0].SMALL
    assert line["tokens_per_step"] == 2 * sizes.pairs * sizes.seq_tokens
    assert line["loss_per_step"][0] == pytest.approx(math.log(2), abs=1e-3)  # policy = reference
