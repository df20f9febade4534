import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rlhfkit.labelling.export import judged_by_item
from rlhfkit.labelling.records import Item, Submission
from rlhfkit.labelling.stats import (
    kendall_tau_b,
    label_stats,
    pair_relations,
    pairwise_agreement,
    position_bias,
    render_stats,
)

try:  # an optional reference: rlhfkit does not depend on scipy
    import scipy.stats as scipy_stats
except ImportError:
    scipy_stats = None

ITEMS = [
    Item("q1", "p1", ("a", "b", "c")),
    Item("q2", "p2", ("a", "b", "c")),
    Item("q3", "p3", ("a", "b")),
]
SUBMISSIONS = [
    Submission("q1", "alice", (0, 1, 2), (0, 1, 2), flags={2: "unsafe"}, seconds=10),
    Submission("q1", "bob", (0, 2, 1), (2, 1, 0), seconds=20),
    Submission("q1", "carol", (0, 0, 1), (1, 0, 2), seconds=30),
    Submission("q2", "alice", (1, 0, 2), (1, 0, 2), seconds=40),
    Submission("q2", "bob", None, (0, 1, 2), flags={0: "broken"}, seconds=5),
    Submission("q3", "alice", (0, 1), (1, 0), seconds=7),
]


def test_pair_relations_say_which_response_of_each_pair_is_better():
    # pairs (0,1), (0,2), (1,2): -1 = the first better, 1 = the second, 0 = a tie
    assert pair_relations((0, 2, 1)) == [-1, -1, 1]
    assert pair_relations((1, 1, 0)) == [0, 1, 1]


def test_kendall_tau_b_on_hand_computed_rankings():
    assert kendall_tau_b((0, 1, 2), (0, 1, 2)) == 1.0
    assert kendall_tau_b((0, 1, 2), (2, 1, 0)) == -1.0
    assert kendall_tau_b((0, 1, 2), (0, 2, 1)) == pytest.approx(1 / 3)  # 2 concordant, 1 not
    # one tie in the first: (2 - 0) / sqrt((3 - 1) * 3)
    assert kendall_tau_b((0, 0, 1), (0, 1, 2)) == pytest.approx(2 / math.sqrt(6))
    # ties on both sides: pair (0,1) tied in x, (2,3) in y; the other four concordant
    assert kendall_tau_b((0, 0, 1, 2), (0, 1, 2, 2)) == pytest.approx((4 - 0) / math.sqrt(5 * 5))
    assert kendall_tau_b((0, 0, 0), (0, 1, 2)) is None  # every pair tied: undefined


rankings = st.integers(2, 7).flatmap(
    lambda k: st.tuples(
        st.lists(st.integers(0, 3), min_size=k, max_size=k),
        st.lists(st.integers(0, 3), min_size=k, max_size=k),
    )
)


@given(rankings)
def test_kendall_tau_b_is_the_cosine_of_the_pair_sign_vectors(pair):
    """The naive definition: tau-b is the cosine between the vectors of pair signs."""
    x, y = pair
    sx, sy = pair_relations(x), pair_relations(y)
    norms = math.sqrt(sum(a * a for a in sx) * sum(b * b for b in sy))
    tau = kendall_tau_b(x, y)
    if norms == 0:
        assert tau is None
    else:
        assert tau == pytest.approx(sum(a * b for a, b in zip(sx, sy)) / norms)
        assert -1 - 1e-12 <= tau <= 1 + 1e-12
        assert tau == pytest.approx(kendall_tau_b(y, x))


@pytest.mark.skipif(scipy_stats is None, reason="scipy is not installed: no reference")
@given(rankings)
def test_kendall_tau_b_matches_scipy(pair):
    x, y = pair
    tau = kendall_tau_b(x, y)
    if tau is not None:
        assert tau == pytest.approx(scipy_stats.kendalltau(x, y).statistic)


def test_pairwise_agreement_counts_a_tie_as_a_third_answer():
    # alice: 0 > 1 > 2; carol: 0 = 1 > 2. They agree on (0,2) and (1,2), not on (0,1).
    assert pairwise_agreement((0, 1, 2), (0, 0, 1)) == (2, 3, 2, 2)
    # bob: 0 > 2 > 1 against carol: agree on (0,2) only; untied pairs (0,2), (1,2)
    assert pairwise_agreement((0, 2, 1), (0, 0, 1)) == (1, 3, 1, 2)
    assert pairwise_agreement((1, 1), (0, 0)) == (1, 1, 0, 0)  # two ties agree


def test_label_stats_on_hand_built_labels():
    stats = label_stats(ITEMS, SUBMISSIONS)

    assert {key: stats[key] for key in ("items", "ranked_items", "submissions", "skipped")} == {
        "items": 3,
        "ranked_items": 3,
        "submissions": 6,
        "skipped": 1,
    }
    assert stats["flags"] == {"broken": 1, "unsafe": 1}
    # only q1 has two labellers who ranked it (bob skipped q2): three labeller pairs
    agreement = stats["agreement"]
    assert (agreement["items"], agreement["labeller_pairs"]) == (1, 3)
    assert agreement["pairwise"] == pytest.approx(5 / 9)
    assert agreement["pairwise_untied"] == pytest.approx(5 / 7)
    assert agreement["kendall_tau_b"] == pytest.approx((1 / 3 + 2 / math.sqrt(6) + 0) / 3)
    # first shown ranked best: alice q1 yes, bob no, carol tied with one other (1/2),
    # alice q2 yes, alice q3 no; chance: 1/3 four times and 1/2 once
    assert stats["position_bias"] == {
        "rankings": 5,
        "first_shown_best": pytest.approx(2.5 / 5),
        "chance": pytest.approx((4 / 3 + 1 / 2) / 5),
    }
    assert stats["labellers"] == {
        "alice": {
            "ranked": 3,
            "skipped": 0,
            "flags": 1,
            "median_seconds": 10,
            "mean_seconds": 19,
        },
        "bob": {"ranked": 1, "skipped": 1, "flags": 1, "median_seconds": 20, "mean_seconds": 20},
        "carol": {"ranked": 1, "skipped": 0, "flags": 0, "median_seconds": 30, "mean_seconds": 30},
    }


def test_a_revised_submission_replaces_the_earlier_one():
    earlier = Submission("q3", "bob", (1, 0), (0, 1), seconds=99, submitted_at="2026-01-01")
    later = Submission("q3", "bob", (0, 1), (0, 1), seconds=1, submitted_at="2026-01-02")

    stats = label_stats(ITEMS, [later, earlier])

    assert stats["submissions"] == 1 and stats["labellers"]["bob"]["mean_seconds"] == 1


def test_rankings_without_a_shown_order_are_left_out_of_the_position_bias():
    imported = Submission("q3", "x", (0, 1), ())

    assert position_bias(judged_by_item(ITEMS, [imported])) == {
        "rankings": 0,
        "first_shown_best": None,
        "chance": None,
    }


def test_render_stats_prints_the_numbers_and_a_row_per_labeller():
    text = render_stats(label_stats(ITEMS, SUBMISSIONS))

    assert "submissions: 6 (1 skipped); flags: broken 1, unsafe 1" in text
    assert "pairwise        0.556  over 9 response pairs" in text
    assert "first shown ranked best 0.500 of 5 rankings (chance 1/K: 0.367)" in text
    assert text.splitlines()[-3].split() == ["alice", "3", "0", "1", "10.0", "19.0"]
    assert text.splitlines()[-1].split() == ["carol", "1", "0", "0", "30.0", "30.0"]


def test_render_stats_shows_a_dash_for_what_was_not_measured():
    text = render_stats(label_stats(ITEMS[:1], [Submission("q1", "al", None, (0, 1, 2))]))

    assert "pairwise        -  over 0 response pairs" in text
    assert text.splitlines()[-1].split() == ["al", "0", "1", "0", "-", "-"]


def test_a_long_labeller_name_widens_the_table_and_keeps_its_columns():
    long = "annotator.with.a.long.address@example.org"
    text = render_stats(label_stats(ITEMS[:1], [Submission("q1", long, (0, 1, 2), (0, 1, 2))]))
    header, row = text.splitlines()[-2:]
    assert row.startswith(long + " ") and len(row) == len(header)
    assert header.index("ranked") + len("ranked") == row.index(" 1 ") + 2  # right-aligned
