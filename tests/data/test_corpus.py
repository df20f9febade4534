"""A user's corpus: lines of a text file, or every string of a dataset's rows."""

import json

import pytest

from rlhfkit.data.corpus import read_corpus
from rlhfkit.errors import DataError


def test_text_file_gives_its_non_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\n   \nsecond line\n", encoding="utf-8")
    assert read_corpus(path) == ["first line", "second line"]


def test_dataset_rows_give_every_string_in_order(tmp_path):
    rows = [
        {"prompt": "Q?", "completion": " A.", "score": 3},
        {"prompt": "P", "responses": [" one", " two"], "meta": {"note": "kept"}},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert read_corpus(path) == ["Q?", " A.", "P", " one", " two", "kept"]


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("missing.txt", None, "no such file"),
        ("blank.txt", b"\n  \n", "no text"),
        ("latin1.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("bad.jsonl", b'{"prompt": \n', "malformed JSON"),
    ],
)
def test_bad_corpus_names_the_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as caught:
        read_corpus(path)
    assert str(path) in str(caught.value)


def test_a_lone_surrogate_in_a_dataset_row_names_its_row(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "half a pair \\ud800"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="row 2: not valid Unicode: a lone surrogate"):
        read_corpus(path)
