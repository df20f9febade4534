"""Hand-computed values of the reward-model trainer's per-batch losses: how the pair weights,
the ensemble's bootstrap weights, the denominators, the imitation and the centring terms add up,
and where the process reward model reads its step logits."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rlhfkit.data.ranking_batch import RankedGroup
from rlhfkit.data.steps import EncodedSteps, collate_steps
from rlhfkit.data.tokenize import EncodedExample
from rlhfkit.models.reward import RewardModel
from rlhfkit.train import reward_losses
from rlhfkit.train.reward_losses import (
    PairDenominators,
    bootstrap_weights,
    pair_denominators,
    pairwise_loss,
    process_loss,
    process_step_logits,
)

PAD = 0
VOCAB = 8


def response(prompt: list[int], completion: list[int]) -> EncodedExample:
    return EncodedExample(
        prompt + completion, [False] * len(prompt) + [True] * len(completion), False
    )


# Group A: a ranking of 3 (best first), 3 pairs of weight 1/3. Group B: a pair with margin 0.5.
# Rows 7 and 4 of the data set (the bootstrap weights are looked up by row).
GROUP_A = RankedGroup(
    [response([1, 2], [3, 4]), response([1, 2], [5]), response([1, 2], [3, 6])], (0, 1, 2)
)
GROUP_B = RankedGroup([response([2, 1], [7, 7]), response([2, 1], [3])], (0, 1), margin=0.5)
ROW_IDS = [7, 4]
# (head 0, head 1) reward of each response, keyed by its tokens
REWARDS = {
    (1, 2, 3, 4): (1.0, 0.5),
    (1, 2, 5): (0.0, 0.5),
    (1, 2, 3, 6): (0.5, -1.0),
    (2, 1, 7, 7): (0.25, 0.0),
    (2, 1, 3): (0.0, 0.25),
}
# Poisson counts (head 0, head 1) of each row: head 0 never sees row 4
BOOTSTRAP = {7: [1.0, 2.0], 4: [0.0, 3.0]}
SEED = 11


def nll(d: float) -> float:
    """-log sigmoid(d)."""
    return math.log1p(math.exp(-d))


# Bradley-Terry sums over pairs and heads of bootstrap weight * pair weight * -log sigmoid(diff)
# head 0, group A (weight 1): diffs 1 - 0, 1 - 0.5, 0 - 0.5, each pair weighing 1/3
# head 1, group A (weight 2): diffs 0.5 - 0.5, 0.5 + 1, 0.5 + 1
# head 0, group B (weight 0): nothing; head 1, group B (weight 3): 0 - 0.25 - margin 0.5
BT_SUM = (
    1 * (nll(1.0) + nll(0.5) + nll(-0.5)) / 3
    + 2 * (nll(0.0) + nll(1.5) + nll(1.5)) / 3
    + 3 * nll(-0.75)
)
# the LM head puts logit log(v + 1) on token v: p(v) = (v + 1) / 36; the best responses'
# completion tokens are 3, 4 (group A) and 7, 7 (group B)
IMITATION_SUM = -(math.log(4 / 36) + math.log(5 / 36) + 2 * math.log(8 / 36))
# sum of squares of all ten rewards
SQUARES_SUM = 1.0 + 0.25 + 0.0 + 0.25 + 0.25 + 1.0 + 0.0625 + 0.0 + 0.0 + 0.0625


class TableRewardModel:
    """Two heads whose rewards are the table above; its LM head is position-independent."""

    device = torch.device("cpu")
    num_heads = 2

    def rewards_by_length(self, input_ids, attention_mask, *, response_mask, group_size):
        rows = [tuple(ids[mask.bool()].tolist()) for ids, mask in zip(input_ids, attention_mask)]
        return torch.tensor([REWARDS[row] for row in rows])

    def __call__(self, input_ids, attention_mask):
        return SimpleNamespace(hidden=input_ids)

    def lm_logits(self, hidden):
        logits = torch.arange(1, VOCAB + 1, dtype=torch.float).log()
        return logits.expand(*hidden.shape, VOCAB)


@pytest.fixture
def table_bootstrap(monkeypatch):
    calls = []

    def fake(row_ids, num_heads, seed):
        calls.append((list(row_ids), num_heads, seed))
        return torch.tensor([BOOTSTRAP[row] for row in row_ids])

    monkeypatch.setattr(reward_losses, "bootstrap_weights", fake)
    return calls


def loss_of(groups, row_ids, **kwargs):
    return pairwise_loss(
        TableRewardModel(),
        groups,
        row_ids,
        pad_token_id=PAD,
        seed=SEED,
        imitation_coef=kwargs.pop("imitation_coef", 0.5),
        centering_coef=kwargs.pop("centering_coef", 2.0),
        **kwargs,
    )


def test_pair_denominators_count_groups_responses_and_the_best_responses_tokens():
    assert pair_denominators([GROUP_A, GROUP_B]) == PairDenominators(
        groups=2, responses=5, best_tokens=4
    )
    # the best response is the one ranked 0, wherever it stands; no best token counts as 1
    worse_first = RankedGroup([response([1], [2, 3, 4]), response([1], [5])], (1, 0))
    assert pair_denominators([worse_first]).best_tokens == 1
    empty_best = RankedGroup([response([1], []), response([1], [5, 6])], (0, 1))
    assert pair_denominators([empty_best]) == PairDenominators(1, 2, 1)


def test_pairwise_loss_hand_value_with_pair_and_bootstrap_weights_imitation_and_centring(
    table_bootstrap,
):
    loss, stats = loss_of([GROUP_A, GROUP_B], ROW_IDS)
    bt = BT_SUM / (2 * 2)  # groups x heads
    imitation = IMITATION_SUM / 4  # the best responses' 4 completion tokens
    centring = SQUARES_SUM / (5 * 2)  # responses x heads
    assert table_bootstrap == [(ROW_IDS, 2, SEED)]
    assert stats["bt_loss"] == pytest.approx(bt, rel=1e-6)
    assert stats["imitation_loss"] == pytest.approx(imitation, rel=1e-6)
    assert loss.item() == pytest.approx(bt + 0.5 * imitation + 2.0 * centring, rel=1e-6)


def test_the_logged_reward_and_accuracy_are_those_of_the_mean_over_heads(table_bootstrap):
    # the model's reward is the mean over its heads: 0.75, 0.25, -0.25 (group A), 0.125, 0.125
    # (group B); each head's own outcomes (head 0: 3 of 4 right, head 1: 2.5 of 4) and the std
    # over all ten outputs (0.524) measured the heads, not the reward eval_accuracy scores
    _, stats = loss_of([GROUP_A, GROUP_B], ROW_IDS)
    # group A ordered right (3 pairs), group B a tie (1/2)
    assert stats["train_pair_accuracy"] == pytest.approx(3.5 / 4)
    assert (stats["pairs_right"], stats["pairs_counted"]) == (3.5, 4.0)
    assert stats["reward_mean"] == pytest.approx(1.0 / 5)
    # deviations from 0.2: 0.55, 0.05, -0.45, -0.075, -0.075; sum of squares 0.51875
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.51875 / 4), rel=1e-6)
    assert stats["reward_sum"] == pytest.approx(1.0)
    assert stats["reward_sq_sum"] == pytest.approx(0.5625 + 0.0625 + 0.0625 + 2 * 0.015625)
    assert stats["reward_count"] == 5.0
    # the heads' spread: two heads' std is |difference| / sqrt(2); differences 0.5, 0.5, 1.5,
    # 0.25, 0.25
    assert stats["reward_head_std"] == pytest.approx(3.0 / math.sqrt(2) / 5, rel=1e-6)
    assert stats["head_std_sum"] == pytest.approx(3.0 / math.sqrt(2), rel=1e-6)


def test_one_head_logs_no_head_spread():
    model = TableRewardModel()
    model.num_heads = 1
    one_head = {row: (rewards[0],) for row, rewards in REWARDS.items()}
    model.rewards_by_length = lambda ids, mask, **_: torch.tensor(
        [one_head[tuple(i[m.bool()].tolist())] for i, m in zip(ids, mask)]
    )
    _, stats = pairwise_loss(
        model, [GROUP_A], [7], pad_token_id=PAD, seed=SEED, imitation_coef=0, centering_coef=0
    )
    # head 0 alone: 1, 0, 0.5 ordered 2 of 3 pairs right
    assert stats["train_pair_accuracy"] == pytest.approx(2 / 3)
    assert "reward_head_std" not in stats and "head_std_sum" not in stats


def test_without_the_extra_terms_the_loss_is_bradley_terry_alone(table_bootstrap):
    loss, stats = loss_of([GROUP_A, GROUP_B], ROW_IDS, imitation_coef=0.0, centering_coef=0.0)
    assert loss.item() == pytest.approx(BT_SUM / 4, rel=1e-6)
    assert "imitation_loss" not in stats


def test_micro_batches_over_the_steps_denominators_add_up_to_the_whole_batch(table_bootstrap):
    whole = PairDenominators(groups=2, responses=5, best_tokens=4)
    part_a, _ = loss_of([GROUP_A], [7], denominators=whole)
    part_b, _ = loss_of([GROUP_B], [4], denominators=whole)
    together, _ = loss_of([GROUP_A, GROUP_B], ROW_IDS)
    assert (part_a + part_b).item() == pytest.approx(together.item(), rel=1e-6)
    # a larger step divides every term by its own counts
    step = PairDenominators(groups=4, responses=10, best_tokens=8)
    loss, _ = loss_of([GROUP_A, GROUP_B], ROW_IDS, denominators=step)
    want = BT_SUM / (4 * 2) + 0.5 * IMITATION_SUM / 8 + 2.0 * SQUARES_SUM / (10 * 2)
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_one_head_has_weight_one_everywhere():
    assert torch.equal(bootstrap_weights([3, 0, 9], 1, seed=5), torch.ones(3, 1))


def test_bootstrap_weights_are_a_function_of_seed_and_row_alone():
    batch = bootstrap_weights([3, 8, 21], 4, seed=5)
    assert batch.shape == (3, 4)
    # the same row gets the same counts in any batch, at any place in it
    assert torch.equal(batch[1], bootstrap_weights([8], 4, seed=5)[0])
    assert torch.equal(batch[[2, 0]], bootstrap_weights([21, 3], 4, seed=5))
    assert torch.equal(batch, bootstrap_weights([3, 8, 21], 4, seed=5))
    # another seed draws other resamples
    rows = list(range(50))
    assert not torch.equal(bootstrap_weights(rows, 4, seed=5), bootstrap_weights(rows, 4, seed=6))


def test_bootstrap_weights_are_poisson_one_counts():
    weights = bootstrap_weights(list(range(2000)), 4, seed=0)
    assert torch.equal(weights, weights.round()) and weights.min() >= 0
    # Poisson(1): mean 1, variance 1, P(0) = 1/e; 8,000 draws: standard error of the mean 0.011
    assert weights.mean().item() == pytest.approx(1.0, abs=0.05)
    assert weights.var().item() == pytest.approx(1.0, abs=0.1)
    assert (weights == 0).float().mean().item() == pytest.approx(math.exp(-1), abs=0.03)
    # the heads resample independently: they disagree on most rows
    assert (weights[:, 0] != weights[:, 1]).float().mean().item() > 0.5


class TokenIdBackbone(nn.Module):
    """Hidden state = the token id: every head output is a known function of the token."""

    def forward(self, input_ids, attention_mask=None, **_):
        return SimpleNamespace(last_hidden_state=input_ids.float().unsqueeze(-1))


class StubClassifier(nn.Module):
    """The shape `RewardModel` wraps: a backbone under `base_model_prefix` and one linear head."""

    base_model_prefix = "body"

    def __init__(self, weights: list[float], biases: list[float]):
        super().__init__()
        self.body = TokenIdBackbone()
        self.score = nn.Linear(1, len(weights))
        with torch.no_grad():
            self.score.weight.copy_(torch.tensor(weights).unsqueeze(-1))
            self.score.bias.copy_(torch.tensor(biases))
        self.config = SimpleNamespace(num_labels=len(weights), pad_token_id=PAD)


def step_model() -> RewardModel:
    """Heads 0.5 * id - 2 and 0.5 * id - 3: their mean, the step logit, is 0.5 * id - 2.5."""
    return RewardModel(StubClassifier([0.5, 0.5], [-2.0, -3.0]))


STEP_ITEMS = [
    EncodedSteps([5, 6, 7, 8, 9], step_ends=[2, 4], labels=[True, False]),
    EncodedSteps([4, 3, 2], step_ends=[1], labels=[False]),
]


def test_process_step_logits_read_the_mean_head_at_each_steps_last_token():
    logits = process_step_logits(step_model(), collate_steps(STEP_ITEMS, PAD))
    # tokens 7 and 9 end the first item's steps, token 3 the second's
    assert logits[0].tolist() == pytest.approx([1.0, 2.0], abs=1e-6)
    assert logits[1, 0].item() == pytest.approx(-1.0, abs=1e-6)


def test_process_loss_is_the_step_cross_entropy_over_the_step_count():
    # BCE: label 1 at logit 1, label 0 at logit 2, label 0 at logit -1 (the padded slot is out)
    total = nll(1.0) + nll(-2.0) + nll(1.0)
    loss, stats = process_loss(step_model(), STEP_ITEMS, pad_token_id=PAD)
    assert loss.item() == pytest.approx(total / 3, rel=1e-6)
    # logit > 0 predicts "correct": right, wrong, right
    assert stats["step_accuracy"] == pytest.approx(2 / 3)
    # a step's micro-batches share the step's count
    loss, _ = process_loss(step_model(), STEP_ITEMS, pad_token_id=PAD, denominator=10)
    assert loss.item() == pytest.approx(total / 10, rel=1e-6)
