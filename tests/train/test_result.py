import dataclasses
from pathlib import Path

import pytest

from rlhfkit.train.dpo import DPOResult
from rlhfkit.train.grpo import GRPOResult
from rlhfkit.train.iterative_grpo import IterativeGRPOResult
from rlhfkit.train.online_dpo import OnlineDPOResult
from rlhfkit.train.ppo import PPOResult
from rlhfkit.train.raft import RAFTResult
from rlhfkit.train.result import TrainResult
from rlhfkit.train.reward import RewardResult
from rlhfkit.train.rloo import RLOOResult
from rlhfkit.train.sft import SFTResult

RESULTS = [
    SFTResult,
    RewardResult,
    DPOResult,
    PPOResult,
    GRPOResult,
    RLOOResult,
    RAFTResult,
    OnlineDPOResult,
    IterativeGRPOResult,
]


@pytest.mark.parametrize("result_type", RESULTS, ids=lambda t: t.__name__)
def test_every_trainer_returns_the_model_its_steps_and_its_evaluations(result_type):
    result = result_type(model_dir=Path("runs/x/final"))
    assert isinstance(result, TrainResult)
    names = [f.name for f in dataclasses.fields(result)]
    assert names[:3] == ["model_dir", "history", "evals"]
    row = {"loss": 0.5}
    result.record(3, row)
    assert result.history == [{"step": 3, "loss": 0.5}] and row == {"loss": 0.5}  # a copy
