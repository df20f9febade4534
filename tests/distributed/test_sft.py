"""SFT under torchrun: 2 gloo processes train exactly as 1 process on the same global batches."""

import dataclasses
import json
import os
import random
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.sft import SFTConfig, train_sft
from tests.distributed.ranks import (
    TOLERANCE,
    close,
    max_weight_difference,
    one_process_and_two_ranks,
)


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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
