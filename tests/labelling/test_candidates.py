import json
import os

import pytest

from rlhfkit.errors import DataError
from rlhfkit.labelling.candidates import (
    CANDIDATES_FILE,
    SUBMISSIONS_FILE,
    append_rows,
    complete_rows,
    read_items,
    read_labels,
    replace_rows,
    write_labels,
)
from rlhfkit.labelling.records import Item, Submission

ITEMS = [
    Item("a", "Say hi.", ("hi", "", "hello"), {"model": "m", "seed": 3}),
    Item("b", [{"role": "user", "content": "Say bye."}], ("bye", "ciao")),
]
SUBMISSIONS = [
    Submission(
        "a",
        "alice",
        (1, 0, 1),
        (2, 0, 1),
        flags={1: "broken"},
        comment="close call",
        seconds=12.5,
        submitted_at="2026-12-04T20:51:03Z",
    ),
    Submission("b", "bob", None, (1, 0), seconds=3.0),
]


def write_lines(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_labels_come_back_as_they_were_written(tmp_path):
    write_labels(tmp_path, ITEMS, SUBMISSIONS)

    assert read_labels(tmp_path) == (ITEMS, SUBMISSIONS)


def test_a_folder_without_submissions_gives_the_items_alone(tmp_path):
    write_labels(tmp_path, ITEMS, [])
    (tmp_path / SUBMISSIONS_FILE).unlink()

    assert read_labels(tmp_path) == (ITEMS, [])


def test_complete_rows_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / CANDIDATES_FILE
    assert complete_rows(path) == 0  # no file yet
    append_rows(path, [{"n": 1}, {"n": 2}])
    whole = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'{"n": 3, "resp')  # killed while writing

    assert complete_rows(path) == 2
    assert path.read_bytes() == whole


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"prompt": "p", "responses": ["a", "b"]}, "item_id", "expected a non-empty string"),
        ({"item_id": "x", "responses": ["a", "b"]}, "prompt", "missing"),
        ({"item_id": "x", "prompt": "p", "responses": ["a"]}, "responses", "two or more"),
        ({"item_id": "x", "prompt": "p", "responses": ["a", 3]}, "responses[1]", "got int"),
        ({"item_id": "x", "prompt": "p", "responses": ["a", "b"], "source": 1}, "source", ""),
    ],
)
def test_a_bad_candidates_row_names_its_file_row_and_field(tmp_path, row, field, message):
    path = tmp_path / CANDIDATES_FILE
    write_lines(path, [{"item_id": "ok", "prompt": "p", "responses": ["a", "b"]}, row])

    with pytest.raises(DataError) as caught:
        read_items(path)
    assert (caught.value.row, caught.value.field) == (2, field)
    assert str(caught.value).startswith(f"{path}: row 2: field '{field}': ")
    assert message in caught.value.message


def test_a_repeated_item_id_is_refused(tmp_path):
    path = tmp_path / CANDIDATES_FILE
    write_lines(path, [{"item_id": "x", "prompt": "p", "responses": ["a", "b"]}] * 2)

    with pytest.raises(DataError, match="row 2: field 'item_id': repeats 'x'"):
        read_items(path)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"item_id": "zzz"}, "field 'item_id': item 'zzz': no such item"),
        ({"ranks": [0, 1]}, "field 'ranks': item 'a': 2 ranks for 3 responses"),
        ({"ranks": [0, -1, 2]}, "field 'ranks': item 'a': a rank below 0"),
        (
            {"shown_order": [0, 0, 1]},
            r"field 'shown_order': item 'a': shown_order \[0, 0, 1\] is not an order of 3",
        ),
        (
            {"flags": {"7": "unsafe"}},
            r"field 'flags.7': item 'a': a flag on a response index outside 0\.\.2",
        ),
    ],
)
def test_a_submission_that_does_not_fit_its_item_is_refused(tmp_path, change, message):
    """One line naming the file, the row and the field, as for every other bad row."""
    write_labels(tmp_path, ITEMS, [])
    row = {"item_id": "a", "labeller": "al", "ranks": [0, 1, 2], "shown_order": [0, 1, 2]}
    write_lines(tmp_path / SUBMISSIONS_FILE, [{**row, **change}])

    with pytest.raises(DataError, match=f"row 1: {message}"):
        read_labels(tmp_path)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"labeller": ""}, "labeller"),
        ({"ranks": [0, True, 1]}, "ranks"),
        ({"ranks": "0 1 2"}, "ranks"),
        ({"flags": {"0": "rude"}}, "flags.0"),
        ({"seconds": -1}, "seconds"),
        ({"submitted_at": 5}, "submitted_at"),
        # "²".isdigit() is true, yet int("²") fails; a float cannot hold 10**400
        ({"flags": {"²": "unsafe"}}, "flags.²"),
        ({"seconds": 10**400}, "seconds"),
    ],
)
def test_a_malformed_submission_row_names_its_field(tmp_path, change, field):
    write_labels(tmp_path, ITEMS, [])
    row = {"item_id": "a", "labeller": "al", "ranks": [0, 1, 2], "shown_order": [0, 1, 2]}
    write_lines(tmp_path / SUBMISSIONS_FILE, [{**row, **change}])

    with pytest.raises(DataError) as caught:
        read_labels(tmp_path)
    assert (caught.value.row, caught.value.field) == (1, field)


def test_a_replaced_file_is_whole_and_takes_its_mode_from_the_umask(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("old\n")
    old = os.umask(0o022)
    try:
        replace_rows(path, [{"a": 1}, {"a": 2}])
    finally:
        os.umask(old)
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    assert path.stat().st_mode & 0o777 == 0o644  # not a temporary file's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]  # no partial file left
