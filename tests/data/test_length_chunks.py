import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlhfkit.data.length_chunks import forward_in_length_chunks, length_sorted_chunks


def test_chunks_by_length_hand_computed():
    # lengths 5, 2, 9, 2, 7 sorted (stable): rows 1, 3, 0, 4, 2
    assert length_sorted_chunks([5, 2, 9, 2, 7], 2) == [[1, 3], [0, 4], [2]]


def test_one_chunk_when_off_or_large():
    assert length_sorted_chunks([5, 2, 9], 0) == [[0, 1, 2]]
    assert length_sorted_chunks([5, 2, 9], 3) == [[0, 1, 2]]
    assert length_sorted_chunks([], 4) == []


@given(st.lists(st.integers(1, 20), min_size=1, max_size=40), st.integers(1, 8))
def test_chunks_partition_the_rows_in_length_order(lengths, size):
    chunks = length_sorted_chunks(lengths, size)
    flat = [i for chunk in chunks for i in chunk]
    assert sorted(flat) == list(range(len(lengths)))
    if size < len(lengths):  # else one chunk, rows in their own order
        assert [lengths[i] for i in flat] == sorted(lengths)
    assert all(len(chunk) <= size for chunk in chunks)


def _padded(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.arange(1, length + 1) * (row + 1)
        mask[row, :length] = 1
    return ids, mask


def test_results_come_back_in_row_order_and_chunks_are_trimmed():
    ids, mask = _padded([3, 1, 4, 2])
    widths = []

    def forward(t):
        widths.append(t["input_ids"].shape[1])
        return (t["input_ids"] * t["attention_mask"]).sum(dim=1)  # padding adds nothing

    out = forward_in_length_chunks(
        forward, {"input_ids": ids, "attention_mask": mask}, mask.sum(dim=1), 2
    )
    assert torch.equal(out, (ids * mask).sum(dim=1))
    assert widths == [2, 4]  # rows {1, 3} need 2 columns, rows {0, 2} need 4


@pytest.mark.parametrize("rows_per_chunk", [0, 1, 3, 32])
def test_reward_model_scores_and_gradients_match_one_padded_batch(tiny_model_dir, rows_per_chunk):
    from rlhfkit.models.reward import RewardModel

    torch.manual_seed(0)
    model = RewardModel.from_pretrained(tiny_model_dir, num_heads=1, with_lm_head=False)
    ids, mask = _padded([7, 3, 12, 5, 9])
    ids = ids % 50 + 3  # ids in the vocabulary, no pad token inside a row
    full = model(ids, mask).rewards
    full.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    chunked = model.rewards_by_length(ids, mask, rows_per_chunk)
    chunked.sum().backward()
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_groups_stay_together_in_order_and_are_sorted_by_their_longest_row():
    ids, mask = _padded([5, 1, 2, 2, 1, 4])  # groups of 2: longest rows 5, 2, 4
    seen = []

    def forward(t):
        seen.append(t["attention_mask"].sum(dim=1).tolist())
        return (t["input_ids"] * t["attention_mask"]).sum(dim=1)

    out = forward_in_length_chunks(
        forward, {"input_ids": ids, "attention_mask": mask}, mask.sum(dim=1), 4, group_size=2
    )
    assert torch.equal(out, (ids * mask).sum(dim=1))
    assert seen == [
        [2, 2, 1, 4],
        [5, 1],
    ]  # groups (2, 2) and (1, 4) first: their longest rows are shorter
