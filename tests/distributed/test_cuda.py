"""On a GPU: the FSDP2 path with one process (as `torchrun --nproc_per_node 1` starts it, NCCL)
in bf16 trains as the plain single-process path does, to bf16 tolerance. Skipped without CUDA
(`scripts/gpu_checks.sh` runs it on a GPU machine)."""

import dataclasses

import pytest
import torch

from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.sft import train_sft
from tests.distributed.ranks import run_on_ranks, train_in_run
from tests.distributed.test_reward import rankings  # noqa: F401 (a fixture)
from tests.distributed.test_sft import BF16_TOLERANCE, arith_data, config  # noqa: F401

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _plain_and_fsdp(train, cfg, tmp_path) -> tuple[list[float], list[float]]:
    """Losses of every step: in this process (no process group), and in one spawned process
    under a process group, where the models are wrapped with FSDP2 (bf16 parameters, fp32
    reduction) instead of running under autocast."""
    plain = train(cfg, prepare_run_dir(tmp_path / "plain", resume=False, overwrite=False))
    fsdp_run = prepare_run_dir(tmp_path / "fsdp", resume=False, overwrite=False)
    fsdp = run_on_ranks(1, train_in_run, train, cfg, str(fsdp_run.root))
    return plain.train_losses, fsdp


def _assert_close_in_bf16(plain: list[float], fsdp: list[float]) -> None:
    assert len(plain) == len(fsdp) == 3
    for step, (a, b) in enumerate(zip(plain, fsdp), start=1):
        assert abs(a - b) <= BF16_TOLERANCE * max(1.0, abs(a)), (step, a, b)


def test_sft_fsdp_on_one_gpu_in_bf16_equals_the_plain_path(
    tiny_model_dir,
    arith_data,  # noqa: F811
    tmp_path,
):
    cfg = dataclasses.replace(
        config(tiny_model_dir, *arith_data), device="cuda", precision=Precision.BF16
    )
    _assert_close_in_bf16(*_plain_and_fsdp(train_sft, cfg, tmp_path))


def test_dpo_fsdp_on_one_gpu_in_bf16_equals_the_plain_path(
    tiny_model_dir,
    rankings,  # noqa: F811
    tmp_path,
):
    cfg = DPOConfig(
        model=str(tiny_model_dir),
        train_data=rankings[0],
        eval_data=rankings[1],
        batch_size=4,
        max_steps=3,
        lr=1e-3,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        device="cuda",
        precision=Precision.BF16,
        progress=False,
        tensorboard=False,
    )
    _assert_close_in_bf16(*_plain_and_fsdp(train_dpo, cfg, tmp_path))
