"""The label store: assignment with overlap, claims while several labellers work, resume, undo,
WAL mode, and a submission on disk by the time `submit` returns."""

import signal
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import read_labels, write_labels
from rlhfkit.labelling.records import Item, Submission
from rlhfkit.labelling.store import LabelStore, shown_order, write_submissions_file


def make_items(n: int, k: int = 3) -> list[Item]:
    return [
        Item(f"item-{i}", f"prompt {i}", tuple(f"response {i}.{j}" for j in range(k)))
        for i in range(n)
    ]


def answer(store: LabelStore, labeller: str, item: Item, skip: bool = False) -> Submission:
    k = len(item.responses)
    submission = Submission(
        item_id=item.item_id,
        labeller=labeller,
        ranks=None if skip else tuple(range(k)),
        shown_order=shown_order(store.seed, labeller, item.item_id, k),
    )
    store.submit(submission)
    return submission


def label_everything(store: LabelStore, labellers: list[str]) -> list[Submission]:
    """Labellers take turns (one item each) until none has anything left."""
    done, active = [], list(labellers)
    while active:
        for labeller in list(active):
            item = store.next_item(labeller)
            if item is None:
                active.remove(labeller)
            else:
                done.append(answer(store, labeller, item))
    return done


def test_a_new_store_is_in_wal_mode(tmp_path):
    LabelStore(tmp_path / "labels.db")
    with sqlite3.connect(tmp_path / "labels.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_items_round_trip_in_order_and_adding_again_adds_nothing(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    chat = [{"role": "user", "content": "hi"}]
    items = [*make_items(3), Item("chat", chat, ("a", "b"), {"model": "m", "seed": 1})]
    assert store.add_items(items) == 4
    assert store.add_items(items) == 0
    assert store.items() == items
    assert store.item("chat") == items[-1]
    assert store.item("missing") is None


def test_an_item_id_with_other_content_is_refused(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(make_items(2))
    changed = Item("item-1", "another prompt", ("x", "y", "z"))
    with pytest.raises(RlhfkitError, match="item-1"):
        store.add_items([changed])
    assert store.items() == make_items(2)


def test_the_overlap_share_is_near_the_setting_and_fixed_by_the_seed(tmp_path):
    items = make_items(1000)

    def overlap_ids(name: str, seed: int) -> set[str]:
        store = LabelStore(tmp_path / name, overlap=0.1, seed=seed)
        store.add_items(items)
        with sqlite3.connect(store.path) as db:
            rows = db.execute("SELECT item_id FROM items WHERE labels_wanted = 2").fetchall()
        return {row[0] for row in rows}

    first, again, other_seed = (
        overlap_ids("a.db", 0),
        overlap_ids("b.db", 0),
        overlap_ids("c.db", 1),
    )
    # a binomial(1000, 0.1) count lies in [70, 130] with probability above 0.998
    assert 70 <= len(first) <= 130
    assert first == again
    assert first != other_seed


def test_overlap_items_go_to_two_labellers_and_the_rest_to_one(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.3, seed=0)
    store.add_items(make_items(60))
    done = label_everything(store, ["ann", "bob", "cy"])
    per_item = Counter(s.item_id for s in done)
    with sqlite3.connect(store.path) as db:
        wanted = dict(db.execute("SELECT item_id, labels_wanted FROM items").fetchall())
    assert per_item == Counter(wanted)
    assert 5 < sum(w == 2 for w in wanted.values()) < 35
    # nobody labels an item twice (the store refuses it), and the work is shared
    assert len({(s.labeller, s.item_id) for s in done}) == len(done)
    assert min(Counter(s.labeller for s in done).values()) >= 20


def test_one_labeller_alone_answers_every_item_once(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.5)
    store.add_items(make_items(10))
    done = label_everything(store, ["ann"])
    assert [s.item_id for s in done] == [item.item_id for item in make_items(10)]


def test_labellers_working_at_once_get_different_items(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)
    store.add_items(make_items(3))
    ann, bob = store.next_item("ann"), store.next_item("bob")
    assert ann.item_id == "item-0" and bob.item_id == "item-1"
    # asking again (a reload) shows the same item, not a new one
    assert store.next_item("ann") == ann


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_item_on_someones_screen_waits_for_them_then_goes_to_others(tmp_path):
    clock = Clock()
    store = LabelStore(tmp_path / "labels.db", overlap=0.0, hold_seconds=600, clock=clock)
    store.add_items(make_items(3))
    left_open = store.next_item("ann")
    served = [answer(store, "bob", store.next_item("bob")).item_id for _ in range(2)]
    assert served == ["item-1", "item-2"]
    # ann's item is hers while she may still be at it: bob waits, and is told why
    clock.now += 599
    assert store.next_item("bob") is None and store.waiting("bob") == 1
    # ann opened it again (a reload): held anew from then
    assert store.next_item("ann") == left_open
    clock.now += 599
    assert store.next_item("bob") is None and store.waiting("bob") == 1
    # left alone past the hold: it goes to bob too, and then nothing is left for him
    clock.now += 2
    assert store.next_item("bob") == left_open and store.waiting("bob") == 0
    answer(store, "bob", left_open)
    assert store.next_item("bob") is None and store.waiting("bob") == 0
    assert store.waiting("cy") == 0  # every item has its ranking: nothing to wait for


def test_a_store_from_before_claims_had_times_keeps_its_claims(tmp_path):
    path = tmp_path / "labels.db"
    store = LabelStore(path, overlap=0.0)
    store.add_items(make_items(2))
    held = store.next_item("ann")
    with sqlite3.connect(path) as db:  # the table as earlier versions made it
        db.execute("CREATE TABLE old AS SELECT labeller, item_id FROM claims")
        db.execute("DROP TABLE claims")
        db.execute("ALTER TABLE old RENAME TO claims")
    store = LabelStore(path)
    assert store.next_item("bob").item_id == "item-1"  # not ann's, while another is open
    answer(store, "bob", store.next_item("bob"))
    # an untimed claim counts as old: once nothing else is open it goes to others too
    assert store.next_item("bob") == held
    assert store.next_item("ann") == held  # and it is still on ann's screen


def test_a_skipped_item_goes_to_another_labeller(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)
    store.add_items(make_items(2))
    answer(store, "ann", store.next_item("ann"), skip=True)
    assert store.next_item("bob").item_id == "item-0"
    assert store.next_item("ann").item_id == "item-1"


def test_a_labeller_resumes_where_they_stopped_after_a_restart(tmp_path):
    path = tmp_path / "labels.db"
    store = LabelStore(path)
    store.add_items(make_items(5))
    for _ in range(2):
        answer(store, "ann", store.next_item("ann"))
    on_screen = store.next_item("ann")

    reopened = LabelStore(path)
    reopened.add_items(make_items(5))
    assert reopened.next_item("ann") == on_screen == make_items(5)[2]
    assert [s.item_id for s in reopened.submissions()] == ["item-0", "item-1"]


def test_undo_removes_the_last_submission_and_shows_its_item_again(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)
    store.add_items(make_items(4))
    assert store.undo_last("ann") is None
    first = answer(store, "ann", store.next_item("ann"))
    answer(store, "bob", store.next_item("bob"))
    second = answer(store, "ann", store.next_item("ann"))
    assert store.next_item("ann").item_id == "item-3"

    assert store.undo_last("ann") == second
    assert [s.labeller for s in store.submissions()] == ["ann", "bob"]
    assert store.next_item("ann").item_id == second.item_id
    assert store.undo_last("ann") == first
    assert store.undo_last("ann") is None
    assert [s.labeller for s in store.submissions()] == ["bob"]


def test_undo_is_refused_once_the_item_went_to_someone_else_or_was_retired(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)
    store.add_items(make_items(3))
    skipped = answer(store, "ann", store.next_item("ann"), skip=True)
    assert store.next_item("bob").item_id == skipped.item_id  # on bob's screen now
    with pytest.raises(RlhfkitError, match="cannot undo item 'item-0'"):
        store.undo_last("ann")
    assert store.submissions() == [skipped]  # the skip stays
    assert store.next_item("ann").item_id == "item-1"  # and ann does not get item-0 back

    answer(store, "ann", store.next_item("ann"), skip=True)
    store.retire_unranked(["item-1"])
    with pytest.raises(RlhfkitError, match="cannot undo item 'item-1'"):
        store.undo_last("ann")


def test_submissions_round_trip_with_flags_ties_skips_and_comments(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(make_items(2, k=4))
    ranked = Submission(
        item_id="item-0",
        labeller="ann",
        ranks=(1, 0, 1, 2),
        shown_order=(3, 1, 0, 2),
        flags={2: "unsafe", 3: "broken"},
        comment="two are equally vague",
        seconds=12.5,
        submitted_at="2026-12-04T20:51:03Z",
    )
    skipped = Submission("item-1", "ann", None, (0, 1, 2, 3), comment="not sure")
    store.submit(ranked)
    store.submit(skipped)
    assert store.submissions() == [ranked, skipped]
    assert store.submissions()[1].skipped


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(item_id="nope"), "no such item"),
        (dict(ranks=(0, 1)), "ranks"),
        (dict(shown_order=(0, 0, 1)), "shown_order"),
        (dict(flags={0: "boring"}), "flag"),
        (dict(flags={7: "unsafe"}), "flag"),
    ],
)
def test_a_submission_that_does_not_fit_its_item_is_refused(tmp_path, change, message):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(make_items(1))
    fields = dict(item_id="item-0", labeller="ann", ranks=(0, 1, 2), shown_order=(2, 1, 0))
    with pytest.raises(RlhfkitError, match=message):
        store.submit(Submission(**{**fields, **change}))
    assert store.submissions() == []


def test_a_second_answer_to_the_same_item_is_refused(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    store.add_items(make_items(1))
    answer(store, "ann", make_items(1)[0])
    with pytest.raises(RlhfkitError, match="already answered"):
        answer(store, "ann", make_items(1)[0])
    assert len(store.submissions()) == 1


def test_progress_counts_items_with_their_rankings_and_the_labellers_own_answers(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=0.0)
    store.add_items(make_items(5))
    answer(store, "ann", store.next_item("ann"))
    answer(store, "ann", store.next_item("ann"), skip=True)
    answer(store, "bob", store.next_item("bob"))  # the item ann skipped
    answer(store, "bob", store.next_item("bob"))
    answer(store, "ann", store.next_item("ann"), skip=True)  # answered, not yet ranked
    ann = store.progress("ann")
    assert (ann.done, ann.total, ann.mine, ann.mine_skipped) == (3, 5, 3, 2)
    assert store.progress("bob").mine == 2


def test_an_overlap_item_is_done_once_it_has_every_ranking_it_wants(tmp_path):
    store = LabelStore(tmp_path / "labels.db", overlap=1.0, overlap_labellers=2)
    store.add_items(make_items(1))
    answer(store, "ann", store.next_item("ann"))
    assert store.progress("ann").done == 0  # one of its two rankings
    answer(store, "bob", store.next_item("bob"), skip=True)
    assert store.progress("ann").done == 0
    answer(store, "cy", store.next_item("cy"))
    assert store.progress("ann").done == 1


def test_settings_are_kept_by_the_store_and_a_different_one_is_refused_by_name(tmp_path):
    path = tmp_path / "labels.db"
    LabelStore(path, overlap=0.25, seed=7)
    assert LabelStore(path).settings == {"overlap": 0.25, "overlap_labellers": 2, "seed": 7}
    with pytest.raises(RlhfkitError, match="overlap=0.25, not 0.5"):
        LabelStore(path, overlap=0.5)
    with pytest.raises(RlhfkitError, match="seed=7, not 8"):
        LabelStore(path, seed=8)
    with pytest.raises(RlhfkitError, match="between 0 and 1"):
        LabelStore(tmp_path / "other.db", overlap=1.5)


def test_the_shown_order_is_a_fixed_shuffle_per_labeller_and_item():
    order = shown_order(0, "ann", "item-0", 6)
    assert sorted(order) == list(range(6))
    assert shown_order(0, "ann", "item-0", 6) == order
    others = {shown_order(0, name, "item-0", 6) for name in ("bob", "cy", "dee", "eve")}
    others |= {shown_order(seed, "ann", "item-0", 6) for seed in (1, 2, 3)}
    assert len(others - {order}) >= 5


def test_a_submission_is_on_disk_when_submit_returns(tmp_path):
    """Commit before acknowledging: a process killed with SIGKILL right after `submit` returned
    has left the submission in the file."""
    path = tmp_path / "labels.db"
    store = LabelStore(path)
    store.add_items(make_items(1))
    child = (
        "import os, signal, sys\n"
        "from rlhfkit.labelling.records import Submission\n"
        "from rlhfkit.labelling.store import LabelStore\n"
        "store = LabelStore(sys.argv[1])\n"
        "store.submit(Submission('item-0', 'ann', (2, 0, 1), (0, 1, 2), comment='kept'))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", child, str(path)], timeout=60)
    assert result.returncode == -signal.SIGKILL
    assert [(s.ranks, s.comment) for s in store.submissions()] == [((2, 0, 1), "kept")]


def test_the_submissions_file_is_what_export_and_stats_read(tmp_path):
    store = LabelStore(tmp_path / "labels.db")
    items = make_items(3)
    store.add_items(items)
    answer(store, "ann", items[0])
    store.submit(Submission("item-1", "bob", None, (2, 0, 1), {0: "broken"}, "?", 3.0, "t"))
    write_labels(tmp_path, items, [])
    assert write_submissions_file(store, tmp_path / "submissions.jsonl").exists()
    assert read_labels(tmp_path) == (items, store.submissions())
    store.undo_last("bob")
    write_submissions_file(store, tmp_path / "submissions.jsonl")
    assert read_labels(tmp_path)[1] == store.submissions()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []


def test_several_processes_labelling_at_once_never_share_a_single_label_item(tmp_path):
    path = tmp_path / "labels.db"
    LabelStore(path, overlap=0.0).add_items(make_items(40))
    worker = (
        "import sys\n"
        "from rlhfkit.labelling.records import Submission\n"
        "from rlhfkit.labelling.store import LabelStore\n"
        "store, name = LabelStore(sys.argv[1]), sys.argv[2]\n"
        "while (item := store.next_item(name)) is not None:\n"
        "    store.submit(Submission(item.item_id, name, (0, 1, 2), (0, 1, 2)))\n"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", worker, str(path), name])
        for name in ("ann", "bob", "cy")
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    done = LabelStore(path).submissions()
    # Every item labelled. Only once no unheld item is left may a held one be served again:
    # at most the 3 items held then, each to the 2 other workers. Without the claims all three
    # would label every item.
    per_item = Counter(s.item_id for s in done)
    assert set(per_item) == {item.item_id for item in make_items(40)}
    assert sum(per_item.values()) - 40 <= 6


def test_retire_unranked_stops_serving_items_without_a_ranking(tmp_path):
    from rlhfkit.labelling.records import Item, Submission

    store = LabelStore(tmp_path / "db", overlap=0.0)
    store.add_items([Item(f"i{n}", "p", ("a", "b")) for n in range(3)])
    store.submit(Submission("i0", "ann", (0, 1), (0, 1)))
    store.submit(Submission("i1", "ann", None, (0, 1)))
    assert store.retire_unranked(["i0", "i1"]) == 1  # i0 has its ranking; i1 only a skip
    assert store.next_item("bob").item_id == "i2"
    assert store.progress("bob").done == 2
