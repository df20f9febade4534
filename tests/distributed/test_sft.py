"""SFT under torchrun: 2 gloo processes train exactly as 1 process on the same global batches."""

import dataclasses
import json
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.sft import SFTConfig, train_sft
from tests.distributed.ranks import (
    TOLERANCE,
    close,
    max_weight_difference,
    one_process_and_two_ranks,
    run_on_ranks,
    torchrun_env,
    train_in_run,
)
from tests.train.test_micro_batches import forwards_inside_backward

BF16_TOLERANCE = 4e-3  # relative: one bf16 rounding (2^-8); measured 1.4e-4 apart


@pytest.fixture
def arith_data(tmp_path):
    examples = ArithTask(flawed_fraction=0.0).sft_examples(26, random.Random(1))
    paths = []
    for name, rows in (("train.jsonl", examples[:20]), ("eval.jsonl", examples[20:])):
        (tmp_path / name).write_text(
            "".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in rows)
        )
        paths.append(str(tmp_path / name))
    return paths


def config(model, train, held_out) -> SFTConfig:
    # 20 rows in batches of 7: each epoch's last batch holds 6, and 7 rows split 4 + 3
    return SFTConfig(
        model=str(model),
        train_data=train,
        eval_data=held_out,
        batch_size=7,
        grad_accum=2,
        max_steps=3,
        lr=3e-3,
        warmup_steps=1,
        eval_every=3,
        sample_every=3,
        num_samples=2,
        sample_max_new_tokens=6,
        save_every=0,
        progress=False,
        tensorboard=False,
    )


def test_two_ranks_equal_one_process(tiny_model_dir, arith_data, tmp_path):
    cfg = config(tiny_model_dir, *arith_data)
    one, two = one_process_and_two_ranks(train_sft, cfg, tmp_path)
    # rank 0 alone writes the metrics (global loss, summed tokens) and the samples
    rows_one, rows_two = read_metrics(one.metrics_path), read_metrics(two.metrics_path)
    assert [r["step"] for r in rows_two] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two):
        assert close(a["loss"], b["loss"]) and close(a["grad_norm"], b["grad_norm"])
    assert close(rows_one[-1]["eval_loss"], rows_two[-1]["eval_loss"])
    samples = (two.root / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2  # once, not once per rank


def test_torchrun_cli_writes_a_model_that_from_pretrained_loads(
    tiny_model_dir, arith_data, tmp_path
):
    train, held_out = arith_data
    settings = [
        f"model={tiny_model_dir}",
        f"train_data={train}",
        "batch_size=6",
        "max_steps=3",
        "lr=3e-3",
        "warmup_steps=1",
        "save_every=0",
        "progress=false",
        "tensorboard=false",
    ]
    env = torchrun_env(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, "-m", "rlhfkit", "sft", "--runs-dir", str(tmp_path), "--name", "two", *settings],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model saved to") == 1  # rank 0 reports, the other rank is quiet
    single = subprocess.run(
        [sys.executable, "-m", "rlhfkit", "sft", "--runs-dir", str(tmp_path), "--name", "one"]
        + settings,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "final")
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "final")
    reference_weights = reference.state_dict()
    assert max_weight_difference(model.state_dict(), reference_weights) < TOLERANCE
    losses = [
        [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]
        for name in ("one", "two")
    ]
    assert all(close(a, b) for a, b in zip(*losses))
    started = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_weight_difference(model.state_dict(), started) > 1e-4  # it trained


def test_lora_two_ranks_equal_one_process(tiny_model_dir, arith_data, tmp_path):
    # the adapters train under FSDP2 (the decoder layers of the peft model sharded); rank 0
    # merges the gathered adapters into a plain model that from_pretrained loads
    cfg = dataclasses.replace(config(tiny_model_dir, *arith_data), lora_r=4, lora_alpha=8)
    one, two = one_process_and_two_ranks(train_sft, cfg, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(two.final)
    weights = model.state_dict()
    assert not any("lora" in name for name in weights)
    started = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert max_weight_difference(weights, started) > 1e-4  # the merged adapters moved it


def test_bf16_two_ranks_follow_one_process_to_bf16_tolerance(tiny_model_dir, arith_data, tmp_path):
    # One process autocasts over fp32 weights; FSDP2 gathers bf16 parameters and reduces the
    # gradients in fp32 (MixedPrecisionPolicy). Both round every matmul input to bf16, in other
    # places, so the runs agree to bf16's precision (8 bits of mantissa), not to 1e-5
    cfg = dataclasses.replace(config(tiny_model_dir, *arith_data), precision="bf16")
    one = prepare_run_dir(tmp_path / "one", resume=False, overwrite=False)
    losses_one = train_sft(cfg, one).train_losses
    two = prepare_run_dir(tmp_path / "two", resume=False, overwrite=False)
    losses_two = run_on_ranks(2, train_in_run, train_sft, cfg, str(two.root))
    assert len(losses_two) == 3
    assert all(abs(a - b) <= BF16_TOLERANCE * abs(a) for a, b in zip(losses_one, losses_two))
    saved = load_file(two.final / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the fp32 master weights
    weights_one = AutoModelForCausalLM.from_pretrained(one.final).state_dict()
    weights_two = AutoModelForCausalLM.from_pretrained(two.final).state_dict()
    started = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    # AdamW's first steps move every weight by about lr whatever its gradient's size, so a
    # near-zero gradient whose sign bf16 rounding flips moves one weight the other way: compare
    # the whole update, not the largest difference
    moved = update_norm(weights_one, started)
    assert update_norm(weights_one, weights_two) < 0.1 * moved  # measured 2%


def update_norm(a: dict, b: dict) -> float:
    return sum(float((a[k] - b[k]).square().sum()) for k in a) ** 0.5


def train_recomputing(cfg: SFTConfig, run):
    """`train_sft`, asserting that the backward recomputed activations (on every rank)."""
    with forwards_inside_backward() as recomputed:
        result = train_sft(cfg, run)
    assert recomputed[0] > 0
    return result


def test_gradient_checkpointing_two_ranks_equal_one_process(tiny_model_dir, arith_data, tmp_path):
    # recomputation inside FSDP2's sharded decoder layers: the same numbers as one process
    cfg = dataclasses.replace(config(tiny_model_dir, *arith_data), gradient_checkpointing=True)
    for run in one_process_and_two_ranks(train_recomputing, cfg, tmp_path):
        saved = [json.loads(p.read_text()) for p in run.root.rglob("config.json")]
        assert saved and all(c["use_cache"] for c in saved)  # as loaded, not training's False
