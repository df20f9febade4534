import torch

from rlhfkit.data.ranking_batch import RankedGroup, collate_groups, ranking_layout
from rlhfkit.data.tokenize import EncodedExample


def response(token: int, length: int) -> EncodedExample:
    return EncodedExample([token] * length, [False] + [True] * (length - 1), truncated=False)


def test_ranking_layout_indexes_the_flat_responses_group_by_group():
    groups = [RankedGroup([response(1, 3), response(2, 2)], (0, 1)),
              RankedGroup([response(3, 2), response(4, 4), response(5, 2)], (0, 0, 1))]
    layout = ranking_layout(groups)
    assert layout["ranking_index"].tolist() == [[0, 1, 0], [2, 3, 4]]
    assert layout["ranking_ranks"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert layout["ranking_mask"].tolist() == [[True, True, False], [True, True, True]]
    # the index finds each response in the batch that collate_groups pads
    first_tokens = collate_groups(groups, pad_token_id=0)["input_ids"][:, 0]
    assert torch.equal(first_tokens[layout["ranking_index"]], torch.tensor([[1, 2, 1], [3, 4, 5]]))
