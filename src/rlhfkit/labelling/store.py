"""The label store: the items to rank and every submission, in one SQLite file.

SQLite in WAL mode with `synchronous=FULL`: each submission is committed before `submit` returns,
so a server killed at any moment keeps everything it acknowledged, and readers (a second
labeller, an exporter) never wait on a writer. Every call opens its own connection, so the store
serves several threads, and several processes, at once.

Assignment. Each item wants one ranking, or `overlap_labellers` rankings from different labellers
for a deterministic share `overlap` of the items (chosen by a hash of the seed and the item id, so
the same items get overlap whatever order they arrive in). A labeller is served items in file
order; the item on their screen is held for them (a claim), so two labellers working at once get
different items, and a labeller who comes back sees the item they left. A claim holds for
`hold_seconds` after the labeller last opened the item; an item whose claim is older is served to
others once nothing else is open, so nobody waits long on a labeller who left, and until then a
labeller with nothing open waits (`waiting`). A skip counts as the labeller's answer but not as a
ranking, so a skipped item goes to someone else.
"""

import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import (
    item_to_row,
    replace_rows,
    submission_problem,
    submission_to_row,
)
from rlhfkit.labelling.records import FLAGS, Item, Submission

DEFAULTS = {"overlap": 0.1, "overlap_labellers": 2, "seed": 0}
"""Store settings used when a new store is created without them."""
HOLD_SECONDS = 600.0
"""How long an item stays with the labeller who last opened it before others may get it too."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    position INTEGER PRIMARY KEY,
    item_id TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    responses TEXT NOT NULL,
    source TEXT NOT NULL,
    labels_wanted INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id TEXT NOT NULL REFERENCES items (item_id),
    labeller TEXT NOT NULL,
    ranks TEXT,
    shown_order TEXT NOT NULL,
    flags TEXT NOT NULL,
    comment TEXT NOT NULL,
    seconds REAL NOT NULL,
    submitted_at TEXT NOT NULL,
    UNIQUE (labeller, item_id)
);
CREATE INDEX IF NOT EXISTS submissions_item ON submissions (item_id);
CREATE TABLE IF NOT EXISTS claims (
    labeller TEXT PRIMARY KEY,
    item_id TEXT NOT NULL,
    claimed_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS claims_item ON claims (item_id);
"""
# Columns are JSON text where the record holds a list or dict; `ranks` is NULL for a skip.

# Items this labeller has not answered that still want a ranking, where a claim by another
# labeller made after :held_since counts as a ranking on its way. :held_since = -1 counts every
# claim (the first choice: items nobody holds); now - hold_seconds only the claims still held.
_OPEN_ITEMS = """
SELECT item_id FROM items AS i
WHERE item_id NOT IN (SELECT item_id FROM submissions WHERE labeller = :labeller)
  AND (SELECT COUNT(*) FROM submissions AS s WHERE s.item_id = i.item_id AND s.ranks IS NOT NULL)
    + (SELECT COUNT(*) FROM claims AS c
       WHERE c.item_id = i.item_id AND c.labeller != :labeller AND c.claimed_at > :held_since)
    < i.labels_wanted
ORDER BY position
"""


@dataclass(frozen=True)
class Progress:
    """How far labelling has got, for the page's "37 of 200"."""

    done: int
    """Items with every ranking they want (one, or `overlap_labellers` for an overlap item);
    skips are not rankings."""
    total: int
    """Items in the store."""
    mine: int
    """This labeller's submissions, skips included."""
    mine_skipped: int
    """Of those, the skips."""


class LabelStore:
    """Items and submissions in the SQLite file at `path` (created if missing).

    `overlap`, `overlap_labellers` and `seed` are fixed when the store is created; None takes the
    store's own (or `DEFAULTS` for a new store), and a different value is refused by name.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        overlap: float | None = None,
        overlap_labellers: int | None = None,
        seed: int | None = None,
        hold_seconds: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.path = Path(path)
        self.hold_seconds, self.clock = hold_seconds, clock
        asked = {"overlap": overlap, "overlap_labellers": overlap_labellers, "seed": seed}
        _check_settings(asked)
        db = self._connect()
        try:
            # WAL is a property of the file: once set, every later connection uses it
            db.execute("PRAGMA journal_mode = WAL")
        finally:
            db.close()
        with self._transaction() as db:
            # executescript would commit first: run the statements inside this transaction
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            claim_columns = {row[1] for row in db.execute("PRAGMA table_info(claims)")}
            if "claimed_at" not in claim_columns:  # a store from before claims had times
                db.execute("ALTER TABLE claims ADD COLUMN claimed_at REAL NOT NULL DEFAULT 0")
            self.settings = _settle_settings(db, asked, self.path)

    @property
    def seed(self) -> int:
        return self.settings["seed"]

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.Error as error:
            raise RlhfkitError(f"{self.path}: cannot open the label store: {error}") from None
        return db

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection inside one transaction, committed on leaving (rolled back on an error)
        and closed. A write transaction takes the write lock up front, so that choosing an item
        and claiming it is one atomic step; a read one sees one snapshot and blocks nobody."""
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def add_items(self, items: Iterable[Item]) -> int:
        """Add items not in the store yet; returns how many were new. An item already stored is
        left as it is, and must be the same: another prompt or responses under its id is refused."""
        added = 0
        with self._transaction() as db:
            for item in items:
                row = _item_columns(item)
                stored = db.execute(
                    "SELECT prompt, responses, source FROM items WHERE item_id = ?",
                    (item.item_id,),
                ).fetchone()
                if stored is None:
                    wanted = labels_wanted(item.item_id, self.settings)
                    db.execute(
                        "INSERT INTO items (item_id, prompt, responses, source, labels_wanted) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (item.item_id, *row, wanted),
                    )
                    added += 1
                elif tuple(stored) != row:
                    raise RlhfkitError(
                        f"{self.path}: item {item.item_id!r} is already stored with other "
                        "content; use a new store (--db) for a new candidates file"
                    )
        return added

    def item(self, item_id: str) -> Item | None:
        with self._transaction(write=False) as db:
            return _fetch_item(db, item_id)

    def items(self) -> list[Item]:
        """Every item, in the order they were added."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT item_id, prompt, responses, source FROM items ORDER BY position"
            ).fetchall()
        return [_item_from_row(row) for row in rows]

    def next_item(self, labeller: str) -> Item | None:
        """The item to show `labeller` now (held for them until they answer it, `hold_seconds`
        after they last opened it), or None when nothing is open to them (`waiting` tells
        whether items on others' screens may still come their way)."""
        now = self.clock()
        with self._transaction() as db:
            item_id = _held_item(db, labeller)
            for held_since in (-1.0, now - self.hold_seconds):
                if item_id is None:
                    found = db.execute(
                        f"{_OPEN_ITEMS} LIMIT 1", {"labeller": labeller, "held_since": held_since}
                    ).fetchone()
                    item_id = found and found[0]
            if item_id is None:
                return None
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (labeller, item_id, now))
            return _fetch_item(db, item_id)

    def waiting(self, labeller: str) -> int:
        """Items that still want a ranking `labeller` could give but that others hold now: when
        `next_item` has nothing for them, these may come their way once answered, skipped or
        left for `hold_seconds`."""
        now = self.clock()
        with self._transaction(write=False) as db:

            def open_items(held_since: float) -> int:
                query = f"SELECT COUNT(*) FROM ({_OPEN_ITEMS})"
                return db.execute(
                    query, {"labeller": labeller, "held_since": held_since}
                ).fetchone()[0]

            # open if no claim held (none is after +inf), less those open with the held claims
            return open_items(float("inf")) - open_items(now - self.hold_seconds)

    def submit(self, submission: Submission) -> None:
        """Store a submission; committed to disk when this returns. Refuses one for an unknown
        item, a second one by the same labeller for the same item, and one that does not fit
        the item (`submission_problem`, or an unknown flag)."""
        item = self.item(submission.item_id)
        problem = "no such item" if item is None else submission_problem(item, submission)
        if problem is None and any(flag not in FLAGS for flag in submission.flags.values()):
            problem = f"a flag that is not one of {FLAGS}"
        if problem is not None:
            raise RlhfkitError(f"submission for item {submission.item_id!r}: {problem}")
        with self._transaction() as db:
            try:
                db.execute(
                    "INSERT INTO submissions (item_id, labeller, ranks, shown_order, flags, "
                    "comment, seconds, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    _submission_columns(submission),
                )
            except sqlite3.IntegrityError:
                raise RlhfkitError(
                    f"{submission.labeller!r} has already answered item {submission.item_id!r}"
                ) from None
            db.execute(
                "DELETE FROM claims WHERE labeller = ? AND item_id = ?",
                (submission.labeller, submission.item_id),
            )

    def was_served(self, labeller: str, item_id: str) -> bool:
        """Whether `item_id` was put on `labeller`'s screen: they hold it, or have answered it."""
        with self._transaction(write=False) as db:
            found = db.execute(
                "SELECT 1 FROM claims WHERE labeller = ? AND item_id = ? UNION "
                "SELECT 1 FROM submissions WHERE labeller = ? AND item_id = ?",
                (labeller, item_id, labeller, item_id),
            ).fetchone()
        return found is not None

    def undo_last(self, labeller: str) -> Submission | None:
        """Delete `labeller`'s latest submission and hold its item for them again (their next
        item); returns what was deleted, or None when they have submitted nothing.

        Raises:
            RlhfkitError: the item wants no ranking from them any more (a skipped item that
                went to someone else since, or one a training run retired): the answer stays.
        """
        now = self.clock()
        with self._transaction() as db:
            row = db.execute(
                f"SELECT id, {_SUBMISSION_FIELDS} FROM submissions WHERE labeller = ? "
                "ORDER BY id DESC LIMIT 1",
                (labeller,),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM submissions WHERE id = ?", (row[0],))
            still_open = db.execute(
                f"SELECT 1 FROM ({_OPEN_ITEMS}) WHERE item_id = :item_id",
                {"labeller": labeller, "held_since": now - self.hold_seconds, "item_id": row[1]},
            ).fetchone()
            if still_open is None:  # raising rolls the deletion back
                raise RlhfkitError(
                    f"cannot undo item {row[1]!r}: it has gone to another labeller since, "
                    "or is no longer wanted; your answer stays"
                )
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (labeller, row[1], now))
        return _submission_from_row(row[1:])

    def retire_unranked(self, item_ids: Iterable[str]) -> int:
        """Stop serving those of `item_ids` that have no ranking (only skips, or no answer):
        they want no more rankings, and count as done. A training run calls this for the
        prompts of a refresh it has moved on from, so people are not served prompts nobody will
        use ahead of the ones the run waits for. Returns how many were retired."""
        ids = list(item_ids)
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "UPDATE items SET labels_wanted = 0 WHERE item_id = ? AND labels_wanted > 0 "
                "AND NOT EXISTS (SELECT 1 FROM submissions AS s "
                "WHERE s.item_id = items.item_id AND s.ranks IS NOT NULL)",
                [(item_id,) for item_id in ids],
            )
            return db.total_changes - before

    def submissions(self) -> list[Submission]:
        """Every submission, in the order they were made."""
        with self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {_SUBMISSION_FIELDS} FROM submissions ORDER BY id")
            return [_submission_from_row(row) for row in rows.fetchall()]

    def progress(self, labeller: str) -> Progress:
        with self._transaction(write=False) as db:
            done, total = db.execute(
                "SELECT (SELECT COUNT(*) FROM items AS i WHERE i.labels_wanted <= (SELECT COUNT(*) "
                "FROM submissions AS s WHERE s.item_id = i.item_id AND s.ranks IS NOT NULL)), "
                "(SELECT COUNT(*) FROM items)"
            ).fetchone()
            mine, skipped = db.execute(
                "SELECT COUNT(*), COUNT(*) - COUNT(ranks) FROM submissions WHERE labeller = ?",
                (labeller,),
            ).fetchone()
        return Progress(done=done, total=total, mine=mine, mine_skipped=skipped)


def shown_order(seed: int, labeller: str, item_id: str, num_responses: int) -> tuple[int, ...]:
    """The order in which `labeller` sees the responses of an item: a shuffle seeded by
    (seed, labeller, item), so a reload shows the same order and labellers see different ones."""
    order = list(range(num_responses))
    random.Random(_hash_int(f"{seed}/order/{labeller}/{item_id}")).shuffle(order)
    return tuple(order)


def write_submissions_file(store: LabelStore, path: str | Path) -> Path:
    """Write every submission of the store as a labels folder's `submissions.jsonl`, which
    `rlhfkit label export` and `stats` read. Written to a temporary file and renamed over
    `path` (`replace_rows`), so a reader never sees half a file."""
    return replace_rows(path, (submission_to_row(s) for s in store.submissions()))


def write_candidates_file(store: LabelStore, path: str | Path) -> Path:
    """Every item of the store as a labels folder's `candidates.jsonl`, replaced whole
    (`replace_rows`), so a reader never sees half a file."""
    return replace_rows(path, (item_to_row(item) for item in store.items()))


def _check_settings(asked: dict) -> None:
    overlap, labellers = asked["overlap"], asked["overlap_labellers"]
    if overlap is not None and not 0.0 <= overlap <= 1.0:
        raise RlhfkitError(f"overlap must be between 0 and 1, got {overlap}")
    if labellers is not None and labellers < 2:
        raise RlhfkitError(f"overlap_labellers must be at least 2, got {labellers}")


def _settle_settings(db: sqlite3.Connection, asked: dict, path: Path) -> dict:
    """The store's settings: written when new, else read back and compared with `asked`."""
    stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
    settings = {}
    for key, default in DEFAULTS.items():
        if key not in stored:
            value = default if asked[key] is None else asked[key]
            db.execute("INSERT INTO meta VALUES (?, ?)", (key, json.dumps(value)))
            settings[key] = value
            continue
        settings[key] = json.loads(stored[key])
        if asked[key] is not None and asked[key] != settings[key]:
            raise RlhfkitError(
                f"{path} was created with {key}={settings[key]}, not {asked[key]}: leave it "
                "unset to keep the store's, or start a new store"
            )
    return settings


def _hash_int(text: str) -> int:
    """64 bits of sha256: the same on every machine and Python run (hash() is salted)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def labels_wanted(item_id: str, settings: dict) -> int:
    """Rankings the item wants: `overlap_labellers` for the share `overlap` of the items that a
    hash of the seed and the item id picks, else one."""
    share = _hash_int(f"{settings['seed']}/overlap/{item_id}") / 2**64
    return settings["overlap_labellers"] if share < settings["overlap"] else 1


def _held_item(db: sqlite3.Connection, labeller: str) -> str | None:
    row = db.execute(
        "SELECT item_id FROM claims WHERE labeller = ? AND item_id NOT IN "
        "(SELECT item_id FROM submissions WHERE labeller = ?)",
        (labeller, labeller),
    ).fetchone()
    return row and row[0]


def _item_columns(item: Item) -> tuple[str, str, str]:
    return (
        json.dumps(item.prompt, ensure_ascii=False),
        json.dumps(list(item.responses), ensure_ascii=False),
        json.dumps(item.source, ensure_ascii=False, sort_keys=True),
    )


def _fetch_item(db: sqlite3.Connection, item_id: str) -> Item | None:
    row = db.execute(
        "SELECT item_id, prompt, responses, source FROM items WHERE item_id = ?", (item_id,)
    ).fetchone()
    return None if row is None else _item_from_row(row)


def _item_from_row(row: tuple) -> Item:
    item_id, prompt, responses, source = row
    return Item(item_id, json.loads(prompt), tuple(json.loads(responses)), json.loads(source))


_SUBMISSION_FIELDS = "item_id, labeller, ranks, shown_order, flags, comment, seconds, submitted_at"


def _submission_columns(s: Submission) -> tuple:
    ranks = None if s.ranks is None else json.dumps(list(s.ranks))
    flags = json.dumps({str(index): flag for index, flag in sorted(s.flags.items())})
    order = json.dumps(list(s.shown_order))
    return (s.item_id, s.labeller, ranks, order, flags, s.comment, s.seconds, s.submitted_at)


def _submission_from_row(row: tuple) -> Submission:
    item_id, labeller, ranks, order, flags, comment, seconds, submitted_at = row
    return Submission(
        item_id=item_id,
        labeller=labeller,
        ranks=None if ranks is None else tuple(json.loads(ranks)),
        shown_order=tuple(json.loads(order)),
        flags={int(index): flag for index, flag in json.loads(flags).items()},
        comment=comment,
        seconds=seconds,
        submitted_at=submitted_at,
    )
