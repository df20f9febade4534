"""A user's own text, for training a tokenizer on it (`rlhfkit models tiny --corpus`)."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhfkit.data.formats import not_unicode
from rlhfkit.data.loading import DATA_FILE_SUFFIXES, read_rows
from rlhfkit.errors import DataError


def read_corpus(path: str | Path) -> list[str]:
    """Every text of `path`: a dataset in any format rlhfkit reads (JSON lines, JSON, Parquet, a
    saved `datasets` directory) gives every string of every row (prompt, completion, chosen,
    responses, ...); any other file gives its non-blank lines.

    Raises:
        DataError: a missing or unreadable file, a malformed row, or no text at all.
    """
    source = Path(path)
    if source.is_dir() or source.suffix.lower() in DATA_FILE_SUFFIXES:
        texts = [text for number, row in read_rows(source) for text in _texts(source, number, row)]
    else:
        texts = _lines(source)
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise DataError(str(path), None, None, "no text to train a tokenizer on")
    return texts


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(str(path), None, None, "no such file") from None
    except UnicodeDecodeError as error:
        raise DataError(str(path), None, None, f"not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise DataError(str(path), None, None, f"cannot be read ({error.strerror})") from None


def _texts(path: Path, number: int, row: Any) -> list[str]:
    """The strings of row `number`, each valid Unicode."""
    texts = list(_strings(row))
    for text in texts:
        if (problem := not_unicode(text)) is not None:
            raise DataError(str(path), number, None, problem)
    return texts


def _strings(value: Any) -> Iterator[str]:
    """The strings of a row, nested lists and mappings included, in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
