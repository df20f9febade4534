"""The labelling files, one JSON object a line: `candidates.jsonl` (the items `rlhfkit sample`
writes, one prompt with its K responses a row) and `submissions.jsonl` (labellers' judgements,
as `rlhfkit label import` writes them). A folder holding both is a set of labels that
`rlhfkit label export` and `rlhfkit label stats` read.

Rows are appended in batches and flushed to disk, so a run stopped at any moment leaves complete
rows plus at most one partial line, which `complete_rows` cuts off before a resumed run appends.
"""

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rlhfkit.data.formats import Format, validate_row
from rlhfkit.data.loading import read_rows, write_jsonl
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.labelling.records import (
    FLAGS,
    Item,
    Submission,
    flag_index,
    seconds_value,
    show_value,
)

CANDIDATES_FILE = "candidates.jsonl"
SUBMISSIONS_FILE = "submissions.jsonl"


def item_to_row(item: Item) -> dict:
    return {
        "item_id": item.item_id,
        "prompt": item.prompt,
        "responses": list(item.responses),
        "source": item.source,
    }


def item_from_row(row: dict, path: str, row_number: int) -> Item:
    """Check one candidates row and build its item.

    Raises:
        DataError: naming the file, row and field (`item_id`, `prompt`, `responses[2]`, ...).
    """
    item_id = row.get("item_id")
    if not isinstance(item_id, str) or not item_id:
        raise DataError(
            path, row_number, "item_id", f"expected a non-empty string, got {item_id!r}"
        )
    validate_row(row, Format.PROMPT, path, row_number)  # the prompt: a text or chat messages
    responses = row.get("responses")
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(path, row_number, "responses", "expected a list of two or more strings")
    for index, response in enumerate(responses):
        # an empty response is kept: the policy wrote it, and a labeller can rank it last
        if not isinstance(response, str):
            got = type(response).__name__
            raise DataError(
                path, row_number, f"responses[{index}]", f"expected a string, got {got}"
            )
    source = row.get("source", {})
    if not isinstance(source, dict):
        raise DataError(path, row_number, "source", "expected an object")
    return Item(item_id, row["prompt"], tuple(responses), source)


def read_items(path: str | Path) -> list[Item]:
    """Every item of a candidates file; a repeated `item_id` is a `DataError`."""
    items, seen = [], set()
    for row_number, row in read_rows(path):
        item = item_from_row(row, str(path), row_number)
        if item.item_id in seen:
            raise DataError(str(path), row_number, "item_id", f"repeats {item.item_id!r}")
        seen.add(item.item_id)
        items.append(item)
    return items


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append JSON lines and force them to disk, so a crash after this keeps them whole."""
    with open(path, "a", encoding="utf-8") as file:
        file.write("".join(json.dumps(row) + "\n" for row in rows))
        file.flush()
        os.fsync(file.fileno())


def replace_rows(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write `rows` as JSON lines to a temporary file beside `path`, flush it to disk and rename
    it over `path`, so a reader (export, stats, the page) never sees half a file. Opened as any
    new file, so the umask sets its mode (mkstemp's 0600 would lock other users out)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.partial")
    try:
        with open(partial, "x", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def complete_rows(path: Path) -> int:
    """The number of complete lines of a file that is being appended to; a partial last line
    (the process was killed mid-write) is cut off. A missing file holds none."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as file:
            file.truncate(end)
    return data.count(b"\n", 0, end)


def submission_to_row(submission: Submission) -> dict:
    return {
        "item_id": submission.item_id,
        "labeller": submission.labeller,
        "ranks": None if submission.ranks is None else list(submission.ranks),
        "shown_order": list(submission.shown_order),
        # JSON keys are strings: response index -> flag
        "flags": {str(index): flag for index, flag in sorted(submission.flags.items())},
        "comment": submission.comment,
        "seconds": submission.seconds,
        "submitted_at": submission.submitted_at,
    }


def submission_from_row(row: dict, path: str, row_number: int) -> Submission:
    """Check one submissions row and build its submission (not yet checked against its item)."""

    def fail(field: str, message: str) -> DataError:
        return DataError(path, row_number, field, message)

    for name in ("item_id", "labeller"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise fail(name, f"expected a non-empty string, got {row.get(name)!r}")
    ranks = row.get("ranks")
    if ranks is not None:
        ranks = _int_list(ranks, "ranks", fail)
    shown_order = _int_list(row.get("shown_order", []), "shown_order", fail)
    flags = row.get("flags", {})
    if not isinstance(flags, dict):
        raise fail("flags", "expected an object: response index -> flag")
    for key, flag in flags.items():
        if flag_index(key) is None or flag not in FLAGS:
            raise fail(f"flags.{key}", f"expected a response index -> one of {FLAGS}")
    raw = row.get("seconds", 0.0)
    seconds = None if raw is None else seconds_value(raw)  # null: not recorded (Argilla)
    if seconds is None and raw is not None:
        got = show_value(raw)
        raise fail("seconds", f"expected a number of seconds >= 0, got {got}")
    for name in ("comment", "submitted_at"):
        if not isinstance(row.get(name, ""), str):
            raise fail(name, "expected a string")
    return Submission(
        item_id=row["item_id"],
        labeller=row["labeller"],
        ranks=None if ranks is None else tuple(ranks),
        shown_order=tuple(shown_order),
        flags={flag_index(key): flag for key, flag in flags.items()},
        comment=row.get("comment", ""),
        seconds=seconds,
        submitted_at=row.get("submitted_at", ""),
    )


def submission_problem(item: Item, submission: Submission) -> str | None:
    """What makes a submission unusable with its item (None when nothing): ranks or flags
    that do not fit the item's responses, or a shown order that is not a permutation of them."""
    found = submission_field_problem(item, submission)
    return None if found is None else found[1]


def submission_field_problem(item: Item, submission: Submission) -> tuple[str, str] | None:
    """`submission_problem` with the field it is in: (field, message), or None."""
    size = len(item.responses)
    if submission.ranks is not None:
        if len(submission.ranks) != size:
            return "ranks", f"{len(submission.ranks)} ranks for {size} responses"
        if any(rank < 0 for rank in submission.ranks):
            return "ranks", "a rank below 0"
    if submission.shown_order and sorted(submission.shown_order) != list(range(size)):
        order = list(submission.shown_order)
        return "shown_order", f"shown_order {order} is not an order of {size} responses"
    for index in submission.flags:
        if not 0 <= index < size:
            return f"flags.{index}", f"a flag on a response index outside 0..{size - 1}"
    return None


def read_submissions(path: str | Path, items: list[Item]) -> list[Submission]:
    """Every submission of a submissions file, each checked against its item in `items`."""
    by_id = {item.item_id: item for item in items}
    submissions = []
    for row_number, row in read_rows(path):
        submission = submission_from_row(row, str(path), row_number)
        item = by_id.get(submission.item_id)
        if item is None:
            found = ("item_id", "no such item")
        else:
            found = submission_field_problem(item, submission)
        if found is not None:
            field, problem = found
            raise DataError(str(path), row_number, field, f"item {submission.item_id!r}: {problem}")
        submissions.append(submission)
    return submissions


def check_new_labels_folder(folder: str | Path) -> None:
    """Refuse a `folder` to write new labels into that is a file, or a folder holding anything:
    its candidates and submissions would be overwritten. A missing or empty folder is fine."""
    folder = Path(folder)
    try:
        if folder.exists() and not folder.is_dir():
            raise RlhfkitError(f"{folder} is a file: give a new folder to write the labels to")
        if folder.is_dir() and any(folder.iterdir()):
            raise RlhfkitError(
                f"{folder} already holds files: give a new or empty folder, so that no labels "
                "are overwritten"
            )
    except OSError as error:
        raise cannot_write(folder, error) from None


def write_labels(folder: str | Path, items: list[Item], submissions: list[Submission]) -> Path:
    """Write `candidates.jsonl` and `submissions.jsonl` into `folder` (made if needed).

    Raises:
        RlhfkitError: the folder cannot be made or written.
    """
    folder = Path(folder)
    try:
        write_jsonl(folder / CANDIDATES_FILE, [item_to_row(item) for item in items])
        write_jsonl(folder / SUBMISSIONS_FILE, [submission_to_row(s) for s in submissions])
    except OSError as error:
        raise cannot_write(folder, error) from None
    return folder


def cannot_write(path: str | Path, error: OSError) -> RlhfkitError:
    """One line for a file or folder that could not be written (a directory where a file goes,
    a parent that cannot be made), naming the path that failed when it is another."""
    reason = error.strerror or str(error)
    failed = error.filename
    if failed is not None and str(failed) != str(path):
        reason += f": {failed}"
    return RlhfkitError(f"cannot write {path}: {reason}")


def read_labels(folder: str | Path) -> tuple[list[Item], list[Submission]]:
    """The items and submissions of a labels folder (`write_labels`)."""
    folder = Path(folder)
    items = read_items(folder / CANDIDATES_FILE)
    submissions_path = folder / SUBMISSIONS_FILE
    if not submissions_path.is_file() or submissions_path.stat().st_size == 0:
        return items, []
    return items, read_submissions(submissions_path, items)


def _int_list(value: Any, name: str, fail) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in value
    ):
        raise fail(name, f"expected a list of integers, got {value!r}")
    return value
