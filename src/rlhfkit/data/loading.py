"""Reading dataset rows from JSON lines, Parquet, saved `datasets` directories or the Hub.

Every source gives the same thing: `(row_number, row)` pairs with 1-based row numbers, so that
validation errors point at a line a user can open. Failures are `RlhfkitError`s with a one-line
message; no library traceback text reaches the user.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit.data.formats import Example, Format, type_name, validate_rows
from rlhfkit.errors import DataError, RlhfkitError

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)

Rows = list[tuple[int, dict]]


def read_rows(path: str | Path) -> Rows:
    """Read every row of a dataset.

    Args:
        path: a `.jsonl`/`.json` file (one JSON object per line, or a `.json` file holding one
            array of objects), a `.parquet` file, a directory written by
            `datasets.Dataset.save_to_disk` (a `DatasetDict` directory gives its `train` split),
            or else a dataset name on the Hub, loaded with split `train`.

    Returns:
        `(row_number, row)` pairs, row numbers 1-based. For JSON lines the row number is the line
        number (blank lines are skipped but counted).

    Raises:
        DataError: a malformed line, or a line that is not a JSON object.
        RlhfkitError: a missing file, an unreadable source, or a dataset with no rows.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    if source.is_dir():
        rows = _read_saved_dataset(source)
    elif suffix in JSON_SUFFIXES + PARQUET_SUFFIXES:
        if not source.is_file():
            raise RlhfkitError(f"{path}: no such file")
        rows = _read_json(source) if suffix in JSON_SUFFIXES else _read_parquet(source)
    elif source.exists():
        raise RlhfkitError(
            f"{path}: unsupported file type '{suffix or source.name}'; use .jsonl, .json, "
            ".parquet, a directory saved with datasets' save_to_disk, or a dataset name"
        )
    elif _looks_like_local_path(str(path)):
        # Sending "./data/missing" to the Hub would only turn a typo into a network error.
        raise RlhfkitError(f"{path}: no such file or directory")
    else:
        rows = _read_hub(str(path))
    if not rows:
        raise RlhfkitError(f"{path}: the dataset has no rows")
    return rows


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines (the folder is made if needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def load_examples(path: str | Path, fmt: Format | str) -> list[Example]:
    """Read a dataset and validate every row against `fmt` (see `read_rows`, `validate_rows`)."""
    return validate_rows(read_rows(path), fmt, str(path))


def _looks_like_local_path(name: str) -> bool:
    """Hub names are `name` or `owner/name`; anything else with path syntax is meant locally."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or Path(name).is_absolute()
    )


def _short(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _read_json(path: Path) -> Rows:
    try:
        # utf-8-sig also reads files that start with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise RlhfkitError(f"{path}: could not read the file: {_short(error)}") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _read_json_array(path, text)
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rows.append((line_number, _parse_object(path, line_number, line)))
    return rows


def _parse_object(path: Path, line_number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        message = f"malformed JSON: {error.msg} (column {error.colno})"
        raise DataError(str(path), line_number, None, message) from None
    if not isinstance(row, dict):
        got = _json_type(row)
        raise DataError(str(path), line_number, None, f"expected a JSON object, got {got}")
    return row


def _read_json_array(path: Path, text: str) -> Rows:
    """A `.json` file holding one array of objects; row number = position in the array."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        # The array spans many lines, so the position is a line, not a row number.
        message = f"malformed JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        raise DataError(str(path), None, None, message) from None
    rows = []
    for row_number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            got = _json_type(item)
            raise DataError(str(path), row_number, None, f"expected a JSON object, got {got}")
        rows.append((row_number, item))
    return rows


def _json_type(value: Any) -> str:
    """JSON's own name for a parsed value's type, as the user sees it in their file."""
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type_name(value))


def _read_parquet(path: Path) -> Rows:
    import pyarrow.parquet  # imported here so that importing rlhfkit stays fast

    try:
        records = pyarrow.parquet.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several unrelated types for a bad file
        raise RlhfkitError(f"{path}: could not read the Parquet file: {_short(error)}") from None
    return list(enumerate(records, start=1))


def _read_saved_dataset(path: Path) -> Rows:
    import datasets  # imported here: importing it takes about a second

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError, ValueError, ...
        message = f"{path}: not a dataset directory saved with save_to_disk: {_short(error)}"
        raise RlhfkitError(message) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(f"'{name}'" for name in loaded) or "none"
            raise RlhfkitError(f"{path}: the saved dataset has no 'train' split (splits: {splits})")
        loaded = loaded["train"]
    return list(enumerate(loaded.to_list(), start=1))


def _read_hub(name: str) -> Rows:
    import datasets  # imported here: importing it takes about a second

    try:
        loaded = datasets.load_dataset(name, split="train")
    except Exception as error:  # offline, not found, no train split, bad config, ...
        raise RlhfkitError(f"could not load dataset '{name}': {_short(error)}") from None
    return list(enumerate(loaded.to_list(), start=1))
