"""The human labeller: a refresh's samples queued in the label store, people's answers (a thread
plays them) read back as ranks with ties and skips, the timeout, and a resumed run that finds the
answers already given."""

import io
import json
import threading
import time
import urllib.request

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import read_labels
from rlhfkit.labelling.export import dense_ranks
from rlhfkit.labelling.human import (
    HumanLabeller,
    HumanSettings,
    first_answers,
    open_human_labeller,
)
from rlhfkit.labelling.records import Submission
from rlhfkit.labelling.store import LabelStore, shown_order

PROMPTS = [PromptExample("What is 2+2?"), PromptExample("Name a colour."), PromptExample("Hi!")]
RESPONSES = [["4", "5", "four"], ["red", "blue", "sky"], ["hello", "hey", "go away"]]


def labeller(tmp_path, **options) -> HumanLabeller:
    settings = dict(run_tag="run", timeout_s=20.0, poll_s=0.02, log=io.StringIO())
    return HumanLabeller(LabelStore(tmp_path / "labels.db"), **{**settings, **options})


def play_human(store: LabelStore, answers: dict[str, tuple | None], name: str = "ann"):
    """A thread that answers items as the page would, as soon as they reach the store:
    `answers` maps an item's prompt to its ranks (None = skip)."""

    def work():
        deadline = time.monotonic() + 20
        left = dict(answers)
        while left and time.monotonic() < deadline:
            item = store.next_item(name)
            if item is None:
                time.sleep(0.01)
                continue
            store.submit(
                Submission(
                    item.item_id,
                    name,
                    left.pop(item.prompt),
                    shown_order(store.seed, name, item.item_id, len(item.responses)),
                )
            )

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_rank_returns_the_ranks_people_submitted_while_it_waited(tmp_path):
    human = labeller(tmp_path)
    people = {"What is 2+2?": (0, 2, 1), "Name a colour.": (1, 1, 0), "Hi!": None}
    thread = play_human(human.store, people)
    ranks = human.rank_with_ties(PROMPTS, RESPONSES)
    thread.join()
    # a tie stays a tie; a skip is no preference
    assert ranks == [(0, 2, 1), (1, 1, 0), None]
    assert human.labels_used == 3 * 3  # C(3,2) for each prompt put to people, skipped or not
    assert [item.item_id for item in human.store.items()] == [
        "run/r0000/p0000",
        "run/r0000/p0001",
        "run/r0000/p0002",
    ]
    # progress went to the log, saying how many were answered
    assert "0 of 3 prompts answered" in human.log.getvalue()
    # the last change too, once everything is answered
    assert "3 of 3 prompts answered (1 skipped)" in human.log.getvalue()


def test_the_next_refresh_queues_new_items(tmp_path):
    human = labeller(tmp_path)
    thread = play_human(human.store, {p.prompt: (0, 1, 2) for p in PROMPTS})
    human.rank_with_ties(PROMPTS, RESPONSES)
    thread.join()
    thread = play_human(human.store, {"Hi!": (2, 1, 0)})
    assert human.rank_with_ties(PROMPTS[2:], RESPONSES[2:]) == [(2, 1, 0)]
    thread.join()
    assert human.store.items()[-1].item_id == "run/r0001/p0000"
    assert human.state_dict() == {"labels_used": 12, "refreshes": 2}


def test_rank_orders_best_first_and_refuses_a_skip(tmp_path):
    human = labeller(tmp_path)
    play_human(human.store, {"What is 2+2?": (1, 0, 1), "Name a colour.": (0, 1, 2)})
    assert human.rank(PROMPTS[:2], RESPONSES[:2]) == [[1, 0, 2], [0, 1, 2]]
    play_human(human.store, {"Hi!": None})
    with pytest.raises(RlhfkitError, match="prompt 0 was skipped"):
        human.rank(PROMPTS[2:], RESPONSES[2:])


def test_nobody_labelling_times_out_with_one_line_and_the_items_stay_queued(tmp_path):
    human = labeller(tmp_path, timeout_s=0.2)
    with pytest.raises(RlhfkitError) as error:
        human.rank_with_ties(PROMPTS[:2], RESPONSES[:2])
    message = str(error.value)
    assert "\n" not in message
    assert "0 of 2 prompts of refresh 0 answered" in message and "--resume" in message
    assert len(human.store.items()) == 2
    assert human.state_dict() == {"labels_used": 0, "refreshes": 0}  # nothing was spent


def test_a_resumed_run_finds_the_answers_already_in_the_store(tmp_path):
    first = labeller(tmp_path, timeout_s=0.2)
    state = first.state_dict()
    with pytest.raises(RlhfkitError):
        first.rank_with_ties(PROMPTS, RESPONSES)
    # people answer while the run is stopped
    play_human(first.store, {"What is 2+2?": (0, 1, 2), "Name a colour.": (2, 1, 0), "Hi!": None})
    for _ in range(200):
        if len(first.store.submissions()) == 3:
            break
        time.sleep(0.02)
    resumed = labeller(tmp_path, timeout_s=0.2)
    resumed.load_state_dict(state)
    assert resumed.rank_with_ties(PROMPTS, RESPONSES) == [(0, 1, 2), (2, 1, 0), None]
    assert len(resumed.store.items()) == 3  # the same items, asked for again, not added again


def test_other_responses_under_a_stored_id_are_refused(tmp_path):
    human = labeller(tmp_path, timeout_s=0.05)
    with pytest.raises(RlhfkitError, match="answered"):
        human.rank_with_ties(PROMPTS[:1], RESPONSES[:1])
    with pytest.raises(RlhfkitError, match="holds other responses than this run sampled"):
        human.rank_with_ties(PROMPTS[:1], [["4", "5", "6"]])


def test_the_first_ranking_counts_and_ranks_are_made_dense():
    def sub(item, who, ranks):
        return Submission(item, who, ranks, (0, 1, 2))

    submissions = [
        sub("a", "ann", None),
        sub("a", "bob", (0, 4, 4)),
        sub("a", "cid", (2, 1, 0)),  # a second ranking of an item already ranked is not used
        sub("b", "ann", None),
        sub("other", "ann", (0, 1, 2)),
    ]
    ranked, skipped = first_answers(submissions, ["a", "b", "c"])
    assert ranked == {"a": (0, 1, 1)} and skipped == {"b"}
    # every response tied prefers nothing: a skip, and a later real ranking is used
    tied = [sub("c", "ann", (1, 1, 1)), sub("d", "ann", (0, 0, 0)), sub("d", "bob", (1, 0, 2))]
    ranked, skipped = first_answers(tied, ["c", "d"])
    assert ranked == {"d": (1, 0, 2)} and skipped == {"c"}
    assert dense_ranks((3, 0, 7, 3)) == (1, 0, 2, 1)


def test_the_store_folder_is_a_labels_folder(tmp_path):
    human = labeller(tmp_path)
    play_human(human.store, {"What is 2+2?": (1, 0, 2), "Name a colour.": None})
    human.rank_with_ties(PROMPTS[:2], RESPONSES[:2])
    items, submissions = read_labels(tmp_path)  # what `rlhfkit label export` reads
    assert [item.responses for item in items] == [tuple(r) for r in RESPONSES[:2]]
    assert [s.ranks for s in submissions] == [(1, 0, 2), None]


def test_the_page_served_in_process_takes_answers(tmp_path):
    pytest.importorskip("starlette", reason="the labelling page needs the `label` extra")
    pytest.importorskip("uvicorn", reason="the labelling page needs the `label` extra")
    log = io.StringIO()
    settings = HumanSettings(tmp_path / "labels.db", "run", 20.0, serve=True, port=0, poll_s=0.02)
    human = open_human_labeller(settings, log=log)
    link = human.page
    assert link.startswith("http://127.0.0.1:") and f"labelling page: {link}" in log.getvalue()
    base, token = link.split("/?token=")

    def answer_through_the_page():
        # as the page does: ask for the next item, send a ranking best first (a group is a tie)
        for _ in range(500):
            with urllib.request.urlopen(f"{base}/api/next?labeller=ann&token={token}") as reply:
                item = json.load(reply)["item"]
            if item is not None:
                break
            time.sleep(0.02)
        body = {"labeller": "ann", "item_id": item["item_id"], "ranking": [[2], [0, 1]]}
        request = urllib.request.Request(
            f"{base}/api/submit?token={token}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(request).close()

    thread = threading.Thread(target=answer_through_the_page, daemon=True)
    thread.start()
    try:
        assert human.rank_with_ties(PROMPTS[:1], RESPONSES[:1]) == [(1, 1, 0)]
    finally:
        thread.join(timeout=10)
        human.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(link, timeout=2)
    assert read_labels(tmp_path)[1][0].ranks == (1, 1, 0)  # the page kept submissions.jsonl


def test_a_refresh_the_run_moved_on_from_no_longer_serves_its_skipped_prompts(tmp_path):
    # "Hi!" is skipped and dropped; the next refresh's prompt must come first, not the old one
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)  # as a store the run creates
    human = HumanLabeller(store, run_tag="run", timeout_s=20.0, poll_s=0.02, log=io.StringIO())
    people = {"What is 2+2?": (0, 1, 2), "Name a colour.": None, "Hi!": None}
    thread = play_human(store, people)
    assert human.rank_with_ties(PROMPTS, RESPONSES) == [(0, 1, 2), None, None]
    thread.join()
    assert human.store.next_item("bob") is None  # the skipped ones are not offered again
    progress = human.store.progress("bob")
    assert (progress.done, progress.total) == (3, 3)


def test_the_run_sets_how_long_a_prompt_stays_on_someones_screen(tmp_path):
    settings = HumanSettings(tmp_path / "labels.db", "run", 20.0, serve=False, port=0, hold_s=30.0)
    assert open_human_labeller(settings, log=io.StringIO()).store.hold_seconds == 30.0
