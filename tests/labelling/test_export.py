import math
import random
from fractions import Fraction

import pytest

from rlhfkit.data.formats import Format, PreferenceExample, RankingExample
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.export import (
    ExportFormat,
    dense_ranks,
    flag_rows,
    latest_submissions,
    mean_ranks,
    pair_rows,
    rankings_rows,
    write_export,
)
from rlhfkit.labelling.records import Item, Submission
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.advice_writer import write_reply
from rlhfkit.train.dpo import DPOConfig, train_dpo
from rlhfkit.train.reward import RewardConfig, train_reward_model

ITEM = Item("q1", "Say hi.", ("hi", "hello", "go away"))


def ranked(labeller, ranks, *, flags=None, at="2026-12-04T10:00:00Z", item="q1") -> Submission:
    order = tuple(range(len(ranks))) if ranks else (0, 1, 2)
    return Submission(item, labeller, ranks, order, flags=flags or {}, submitted_at=at)


def test_a_ranking_per_labeller_best_first_with_flags_aligned():
    submissions = [
        ranked("alice", (1, 0, 2), flags={2: "unsafe"}),
        ranked("bob", (0, 0, 5), at="2026-12-04T11:00:00Z"),
    ]

    rows = rankings_rows([ITEM], submissions)

    assert rows == [
        {
            "prompt": "Say hi.",
            "responses": ["hello", "hi", "go away"],
            "ranks": [0, 1, 2],
            "flags": [[], [], ["unsafe"]],
            "item_id": "q1",
            "labeller": "alice",
            "submitted_at": "2026-12-04T10:00:00Z",
        },
        {
            "prompt": "Say hi.",
            "responses": ["hi", "hello", "go away"],
            "ranks": [0, 0, 1],  # a tie, and rank 5 made dense
            "flags": [[], [], []],
            "item_id": "q1",
            "labeller": "bob",
            "submitted_at": "2026-12-04T11:00:00Z",
        },
    ]


def test_merged_rankings_order_by_mean_rank_and_tie_equal_means():
    submissions = [
        ranked("alice", (0, 1, 2), flags={2: "unsafe"}),
        ranked("bob", (1, 0, 2), flags={2: "broken"}, at="2026-12-04T12:00:00Z"),
    ]

    (row,) = rankings_rows([ITEM], submissions, merge=True)

    # means 1/2, 1/2, 2: the first two tie
    assert row["responses"] == ["hi", "hello", "go away"] and row["ranks"] == [0, 0, 1]
    assert row["flags"] == [[], [], ["broken", "unsafe"]]
    assert (row["labeller"], row["submitted_at"]) == ("alice,bob", "2026-12-04T12:00:00Z")


def test_mean_ranks_are_exact_over_dense_ranks():
    assert mean_ranks([(0, 1, 2), (0, 2, 1), (2, 0, 1)]) == [
        Fraction(2, 3),
        Fraction(1),
        Fraction(4, 3),
    ]
    # (0, 5, 5) counts as (0, 1, 1): a labeller's numbering does not weigh more
    assert mean_ranks([(0, 5, 5), (1, 0, 2)]) == [Fraction(1, 2), Fraction(1, 2), Fraction(3, 2)]
    assert dense_ranks((3, 0, 3, 7)) == (1, 0, 1, 2)


def test_skips_all_ties_and_empty_responses_are_left_out():
    item = Item("q2", "Hm?", ("", "yes", "no"))
    submissions = [
        ranked("alice", None),  # skipped
        ranked("bob", (0, 0, 0)),  # prefers nothing
        ranked("carol", (0, 1, 1), item="q2"),  # best is empty: yes and no tie
        ranked("dan", (2, 0, 1), item="q2"),
    ]

    rows = rankings_rows([ITEM, item], submissions)

    assert [(row["labeller"], row["responses"], row["ranks"]) for row in rows] == [
        ("dan", ["yes", "no"], [0, 1])
    ]


def test_the_latest_submission_of_a_labeller_counts():
    first = ranked("alice", (0, 1, 2), at="2026-12-04T10:00:00Z")
    revised = ranked("alice", (2, 1, 0), at="2026-12-04T10:05:00Z")
    skipped_later = ranked("bob", (0, 1, 2)), ranked("bob", None, at="2026-12-05T00:00:00Z")

    assert latest_submissions([revised, first]) == [revised]
    (row,) = rankings_rows([ITEM], [revised, first, *skipped_later])
    assert row["responses"] == ["go away", "hello", "hi"]


def test_a_chat_prompt_gets_its_responses_as_assistant_messages():
    chat = [{"role": "user", "content": "Say hi."}]
    item = Item("q3", chat, ("hi", "hello"))

    (row,) = rankings_rows([item], [ranked("al", (1, 0), item="q3")])

    assert row["responses"] == [
        [{"role": "assistant", "content": "hello"}],
        [{"role": "assistant", "content": "hi"}],
    ]


def test_pairs_are_every_two_responses_at_different_ranks_with_the_rank_gap():
    submissions = [ranked("alice", (1, 0, 2)), ranked("bob", (0, 0, 1))]

    pairs = pair_rows([ITEM], submissions)

    assert [(p["chosen"], p["rejected"], p["margin"], p["ranking_id"]) for p in pairs] == [
        ("hello", "hi", 1, "q1:alice"),
        ("hello", "go away", 2, "q1:alice"),
        ("hi", "go away", 1, "q1:alice"),
        ("hi", "go away", 1, "q1:bob"),  # the tie between hi and hello is no pair
        ("hello", "go away", 1, "q1:bob"),
    ]
    assert all(p["prompt"] == "Say hi." for p in pairs)


def test_a_text_ranked_at_two_ranks_is_left_out_in_both_formats():
    # a small policy repeats itself: "Hello." sampled twice, ranked first and third
    item = Item("d1", "hi", ("Hello.", "Go away.", "Hello.", "Hey."))
    submissions = [ranked("ann", (0, 2, 3, 1), item="d1"), ranked("bob", (0, 1, 0, 1), item="d1")]

    rows = rankings_rows([item], submissions)
    pairs = pair_rows([item], submissions)

    assert [(row["labeller"], row["responses"], row["ranks"]) for row in rows] == [
        ("ann", ["Hey.", "Go away."], [0, 1]),
        ("bob", ["Hello.", "Hello.", "Go away.", "Hey."], [0, 0, 1, 1]),  # copies tied: kept
    ]
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("Hey.", "Go away."),
        ("Hello.", "Go away."),
        ("Hello.", "Hey."),
    }
    assert not any(p["chosen"] == p["rejected"] for p in pairs)


@pytest.mark.parametrize(
    "submission, message",
    [
        (ranked("al", (0, 1, 2), item="nope"), "item 'nope' by 'al': no such item"),
        (ranked("al", (0, 1)), "item 'q1' by 'al': 2 ranks for 3 responses"),
    ],
)
def test_a_submission_that_does_not_fit_is_an_error(submission, message):
    with pytest.raises(RlhfkitError, match=message):
        rankings_rows([ITEM], [submission])


def test_flags_are_exported_from_ranked_and_skipped_items_alike():
    other = Item("q2", [{"role": "user", "content": "Say bye."}], ("bye", "", "later"))
    submissions = [
        ranked("al", (0, 1, 2), flags={2: "unsafe"}, at="2026-12-04T09:00:00Z"),
        ranked("al", (0, 1, 2), flags={1: "broken"}),  # revised: only the latest counts
        ranked("bo", None, flags={2: "unsafe", 0: "broken"}),  # skipped: not in the rankings
        ranked("bo", None, flags={1: "broken"}, item="q2"),  # an empty response, in a chat
        ranked("cy", (0, 0, 1)),  # nothing flagged
    ]
    rows = flag_rows([ITEM, other], submissions)
    common = {"comment": "", "submitted_at": "2026-12-04T10:00:00Z"}
    assert rows == [
        {
            "prompt": "Say hi.",
            "response": "hello",
            "flag": "broken",
            "item_id": "q1",
            "labeller": "al",
            "skipped": False,
            **common,
        },
        {
            "prompt": "Say hi.",
            "response": "hi",
            "flag": "broken",
            "item_id": "q1",
            "labeller": "bo",
            "skipped": True,
            **common,
        },
        {
            "prompt": "Say hi.",
            "response": "go away",
            "flag": "unsafe",
            "item_id": "q1",
            "labeller": "bo",
            "skipped": True,
            **common,
        },
        {
            "prompt": other.prompt,
            "response": [{"role": "assistant", "content": ""}],
            "flag": "broken",
            "item_id": "q2",
            "labeller": "bo",
            "skipped": True,
            **common,
        },
    ]


def test_a_flags_export_with_nothing_flagged_or_merged_is_an_error(tmp_path):
    path = tmp_path / "flags.jsonl"
    with pytest.raises(RlhfkitError, match="nothing to export to .*: no submission flags a"):
        write_export([ITEM], [ranked("al", (0, 1, 2))], path, ExportFormat.FLAGS)
    flagged = [ranked("al", None, flags={0: "unsafe"})]
    with pytest.raises(RlhfkitError, match="^--merge merges rankings: the flags export has none"):
        write_export([ITEM], flagged, path, ExportFormat.FLAGS, merge=True)
    assert write_export([ITEM], flagged, path, "flags") == 1 and path.is_file()


def test_nothing_to_export_is_an_error(tmp_path):
    with pytest.raises(RlhfkitError, match="nothing to export"):
        write_export([ITEM], [ranked("al", None)], tmp_path / "x.jsonl", ExportFormat.RANKINGS)


def advice_labels(num_items: int) -> tuple[list[Item], list[Submission]]:
    """Advice prompts with three written replies each, ranked by two labellers (ties too)."""
    rng = random.Random(0)
    items, submissions = [], []
    for index, prompt in enumerate(AdviceTask().prompts(num_items, rng)):
        replies = tuple(write_reply(rng, prompt.metadata["topic"]) for _ in range(3))
        items.append(Item(f"i{index}", prompt.prompt, replies))
        for labeller in ("alice", "bob"):
            ranks = tuple(rng.choice([0, 1, 1, 2]) for _ in range(3))
            submissions.append(Submission(f"i{index}", labeller, ranks, (0, 1, 2)))
    return items, submissions


def test_exported_files_load_as_rlhfkit_rankings_and_pairs(tmp_path):
    items, submissions = advice_labels(6)
    rankings_path, pairs_path = tmp_path / "rankings.jsonl", tmp_path / "pairs.jsonl"
    count = write_export(items, submissions, rankings_path, ExportFormat.RANKINGS)
    pair_count = write_export(items, submissions, pairs_path, ExportFormat.PAIRS, merge=True)

    rankings = load_examples(rankings_path, Format.RANKING)
    pairs = load_examples(pairs_path, Format.PREFERENCE)
    expected = rankings_rows(items, submissions)
    assert len(rankings) == count == len(expected)
    assert all(isinstance(example, RankingExample) for example in rankings)
    assert [list(example.ranks) for example in rankings] == [row["ranks"] for row in expected]
    assert len(pairs) == pair_count and all(isinstance(p, PreferenceExample) for p in pairs)
    assert [p.margin for p in pairs] == [
        row["margin"] for row in pair_rows(items, submissions, merge=True)
    ]


def test_exported_rankings_train_a_reward_model_and_pairs_train_dpo(tiny_model_dir, tmp_path):
    items, submissions = advice_labels(8)
    rankings_path, pairs_path = tmp_path / "rankings.jsonl", tmp_path / "pairs.jsonl"
    write_export(items, submissions, rankings_path, ExportFormat.RANKINGS)
    num_pairs = write_export(items, submissions, pairs_path, ExportFormat.PAIRS)
    common = dict(model=str(tiny_model_dir), batch_size=4, max_steps=2, save_every=0)
    quiet = dict(progress=False, tensorboard=False, warmup_steps=0)

    rm_run = prepare_run_dir(tmp_path / "rm", resume=False, overwrite=False)
    rm = train_reward_model(RewardConfig(train_data=str(rankings_path), **common, **quiet), rm_run)
    dpo_run = prepare_run_dir(tmp_path / "dpo", resume=False, overwrite=False)
    dpo = train_dpo(DPOConfig(train_data=str(pairs_path), **common, **quiet), dpo_run)

    assert len(rm.train_losses) == 2 and all(math.isfinite(x) for x in rm.train_losses)
    assert (rm.model_dir / "config.json").is_file()
    assert dpo.labels == num_pairs  # every exported pair was read as one comparison
    # the policy starts as its reference: the first DPO loss is log 2
    assert dpo.history[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)
