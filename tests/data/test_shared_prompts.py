import torch

from rlhfkit.data.shared_prompts import common_prefix_starts, shares_prompts, split_at_response


def test_split_at_response_hand_example():
    # right-padded rows: prompt [5, 6] + response [7, 8]; prompt [9] + response [10, 11, 12]
    ids = torch.tensor([[5, 6, 7, 8, 0], [9, 10, 11, 12, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    response = torch.tensor(
        [[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool
    )  # row 1: last token not counted
    out_ids, out_attention, counted, width = split_at_response(ids, attention, response)
    assert width == 3
    assert out_ids.tolist() == [[5, 6, 7, 8, 0], [0, 9, 10, 11, 12]]
    assert out_attention.long().tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert counted.long().tolist() == [[1, 1, 0], [1, 1, 0]]


def test_shares_prompts_needs_equal_ids_and_padding_in_every_group():
    ids = torch.tensor([[0, 4, 5], [0, 4, 5], [7, 8, 9], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    assert shares_prompts(ids, mask, 2)
    assert not shares_prompts(ids, mask, 4)  # two prompts in one group
    assert not shares_prompts(ids, mask, 3)  # 4 rows do not split into groups of 3
    other_padding = mask.clone()
    other_padding[1, 0] = True
    assert not shares_prompts(ids, other_padding, 2)


def test_common_prefix_starts_hand_values():
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 0, 0], [1, 2, 3, 0, 0], [1, 2, 3, 4, 0]])
    attention = (ids != 0).long()
    # group 1 shares [5, 6]; group 2's shorter row is all prefix: kept one token short of it
    assert common_prefix_starts(ids, attention, 2) == [2, 2, 2, 2]
    assert common_prefix_starts(ids, attention, 1) == [3, 2, 2, 3]  # alone: all but the last token
    ids[1, 0] = 4
    assert common_prefix_starts(ids, attention, 2)[:2] == [0, 0]  # nothing shared
