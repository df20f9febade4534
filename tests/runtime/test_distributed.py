"""The torchrun helpers that need no process group: launch detection, rank shares, and the
single-process path that must stay exactly today's."""

import pytest
import torch

from rlhfkit.errors import RlhfkitError
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.distributed import (
    FrozenModels,
    Launch,
    Ranks,
    current_ranks,
    full_state_dict,
    gathered,
    gradient_passes,
    launch_from_env,
    place_frozen,
    rank_shares,
    rank_slice,
    reduce_sums,
    refuse_unsupported,
)


def test_launch_is_read_from_torchrun_variables():
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Launch(2, 4, 0)
    with pytest.raises(RlhfkitError, match="RANK"):
        launch_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(RlhfkitError, match="outside"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_a_process_without_a_group_is_a_single_unsharded_rank():
    assert current_ranks() == Ranks(0, 1, sharded=False)
    assert current_ranks().is_main


@pytest.mark.parametrize("count, world", [(7, 2), (6, 3), (2, 4), (0, 2), (10, 1)])
def test_rank_slices_cover_the_items_once_in_order(count, world):
    items = list(range(count))
    parts = [items[rank_slice(count, rank, world)] for rank in range(world)]
    assert sum(parts, []) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_rank_takes_its_contiguous_share_of_every_micro_batch():
    micro = [[9, 4, 7], [1, 8]]
    assert [s.rows for s in rank_shares(micro, Ranks(0, 2, True))] == [[9, 4], [1]]
    assert [s.rows for s in rank_shares(micro, Ranks(1, 2, True))] == [[7], [8]]
    assert [s.rows for s in rank_shares(micro, Ranks())] == micro


def test_a_rank_without_rows_gets_one_zero_weight_stand_in():
    shares = rank_shares([[5], [6]], Ranks(1, 2, True))
    assert len(shares) == 1 and shares[0].stand_in and shares[0].rows == [5]
    assert not any(s.stand_in for s in rank_shares([[5], [6]], Ranks(0, 2, True)))


def test_single_process_helpers_change_nothing():
    model = torch.nn.Linear(2, 1)
    passes = [object(), object()]
    assert list(gradient_passes(model, passes)) == passes
    values = {"loss": 1.5, "tokens": 3}
    assert reduce_sums(values, Ranks()) == values
    assert full_state_dict(model, Ranks()) is None
    refuse_unsupported(Ranks(), {"save_every > 0": True})  # accepted in one process


@pytest.mark.parametrize("frozen_models", list(FrozenModels))
def test_a_single_process_keeps_frozen_models_whole_whatever_the_setting(frozen_models):
    model = torch.nn.Linear(2, 1)
    weight = model.weight
    placed = place_frozen(model, frozen_models, None, Precision.FP32)  # no mesh: one process
    assert placed is model and placed.weight is weight
    with gathered(placed):  # nothing to gather
        assert placed.weight is weight


def test_unsupported_settings_are_named_under_torchrun():
    with pytest.raises(RlhfkitError, match="save_every > 0, --resume"):
        refuse_unsupported(
            Ranks(0, 2, True), {"save_every > 0": True, "--resume": True, "x": False}
        )
