import json
import logging
import math

import pytest
import torch

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.runtime.distributed import Ranks
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.offline_loop import OfflineLoop, OfflineResult, longest_sequence
from rlhfkit.train.reward import RewardConfig
from rlhfkit.train.sft import SFTConfig


def _loop(tmp_path, cfg, *, start_step=0, ranks=None):
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    loop = OfflineLoop(
        cfg,
        RunDir(tmp_path),
        ranks or Ranks(),
        model=None,
        tokenizer=None,
        optimizer=optimizer,
        stage="sft",
        label="sft",
        start_step=start_step,
    )
    return loop, weight, optimizer


def _cfg(**overrides):
    settings = dict(max_steps=5, warmup_steps=2, min_lr_ratio=0.1, lr=1.0, progress=False)
    settings.update(tensorboard=False, eval_every=2, save_every=2, batch_size=3, grad_accum=2)
    return SFTConfig(**{**settings, **overrides})


@pytest.mark.parametrize("config", [SFTConfig, RewardConfig, DPOConfig])
def test_every_offline_config_has_the_settings_the_loop_reads(tmp_path, config):
    loop, _, _ = _loop(tmp_path, config(progress=False, tensorboard=False))
    assert list(loop.steps()) == list(range(config().max_steps))
    assert len(loop.micro_rows(0, 100)) == config().grad_accum


def test_micro_rows_are_the_steps_positions_in_the_seeded_order(tmp_path):
    loop, _, _ = _loop(tmp_path, _cfg(batch_size=3, grad_accum=2, seed=4))
    epoch = loop.micro_rows(0, 6) + loop.micro_rows(1, 6)  # 6 rows: one epoch in two steps
    assert len(epoch) == 4 and all(len(rows) == 3 for rows in epoch)
    assert sorted(i for rows in epoch[:2] for i in rows) == list(range(6))
    assert loop.micro_rows(1, 6) == _loop(tmp_path / "again", _cfg(seed=4))[0].micro_rows(1, 6)
    other_seed = [_loop(tmp_path / f"s{s}", _cfg(seed=s))[0].micro_rows(0, 6) for s in range(5)]
    assert any(rows != loop.micro_rows(0, 6) for rows in other_seed)


def test_update_warms_up_then_decays_and_applies_the_rate(tmp_path):
    loop, weight, _ = _loop(tmp_path, _cfg(max_steps=5, warmup_steps=2, min_lr_ratio=0.1))
    rates = []
    for step in range(5):
        weight.grad = torch.tensor([0.0, 0.5])
        before = weight.detach().clone()
        lr, grad_norm = loop.update(step, loss=1.0)
        assert grad_norm == pytest.approx(0.5)
        assert weight[1].item() == pytest.approx(before[1].item() - lr * 0.5)
        assert weight.grad is None or not weight.grad.any()  # cleared for the next step
        rates.append(lr)
    # warm-up 1/2, 1; then cosine from 1 down to 0.1 over the 3 steps after it
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert rates == pytest.approx([0.5, 1.0, *cosine])


def test_a_non_finite_loss_skips_the_update(tmp_path):
    loop, weight, _ = _loop(tmp_path, _cfg(max_nonfinite_skips=1))
    weight.grad = torch.tensor([1.0, 1.0])
    loop.update(0, loss=float("nan"))
    assert weight.tolist() == [1.0, 1.0]
    assert loop.guard.skipped == 1


def test_end_step_logs_every_step_and_checkpoints_when_due_but_not_at_the_end(tmp_path):
    loop, _, _ = _loop(tmp_path, _cfg(max_steps=5, save_every=2, eval_every=2))
    result, saved = OfflineResult(model_dir=tmp_path / "final"), []
    loop.save_checkpoint = saved.append  # which steps; what a checkpoint holds: test_resume.py
    with loop:
        for step in loop.steps():
            row = {"loss": float(step), "lr": 0.1}
            loop.end_step(step + 1, row, result, tokens=10)
    assert saved == [2, 4]  # the final model, not a checkpoint, follows step 5
    assert [done for done in range(1, 6) if loop.eval_due(done)] == [2, 4, 5]
    assert result.train_losses == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [row["step"] for row in result.history] == [1, 2, 3, 4, 5]
    lines = [json.loads(line) for line in RunDir(tmp_path).metrics_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[2]["loss"] == 2.0


def test_a_resumed_loop_starts_at_its_checkpoint_and_drops_the_later_metrics(tmp_path):
    loop, _, _ = _loop(tmp_path, _cfg(max_steps=5, save_every=0))
    result = OfflineResult(model_dir=tmp_path / "final")
    with loop:
        for step in loop.steps():
            loop.end_step(step + 1, {"loss": 1.0}, result, tokens=1)
    resumed, _, _ = _loop(tmp_path, _cfg(max_steps=5), start_step=2)
    assert list(resumed.steps()) == [2, 3, 4]
    with resumed:
        pass
    lines = RunDir(tmp_path).metrics_path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_only_rank_zero_writes_metrics(tmp_path):
    one_rank = Ranks(rank=1, world_size=2, sharded=True)
    loop, _, _ = _loop(tmp_path, _cfg(save_every=0), ranks=one_rank)
    with loop:
        result = OfflineResult(model_dir=tmp_path / "final")
        loop.end_step(1, {"loss": 1.0}, result, tokens=1)
    assert not RunDir(tmp_path).metrics_path.exists()
    assert result.train_losses == [1.0]


def test_a_sequence_past_the_models_positions_is_told_at_the_start(
    tiny_model_dir, tmp_path, caplog, monkeypatch
):
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.rollout import architecture

    monkeypatch.setattr(architecture, "_WARNED_POSITIONS", set())
    rows = [EncodedExample(list(range(n)), [True] * n, truncated=False) for n in (5, 9)]
    groups = [RankedGroup(rows, (0, 1))]
    model = RewardModel.from_pretrained(tiny_model_dir)
    assert longest_sequence(rows) == longest_sequence(groups) == 9 and longest_sequence([]) == 0
    monkeypatch.setattr(model.config, "max_position_embeddings", 8)
    with caplog.at_level(logging.WARNING, logger="rlhfkit"):
        OfflineLoop(
            _cfg(),
            RunDir(tmp_path),
            Ranks(),
            model=model,
            tokenizer=None,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
            stage="reward",
            label="reward model",
            start_step=0,
            rows=groups,
        )
    assert "reward model data: sequences of up to 9 positions, past the model's" in caplog.text
