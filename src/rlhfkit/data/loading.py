"""Reading dataset rows from JSON lines, Parquet, saved `datasets` directories or the Hub.

Every source gives the same thing: `(row_number, row)` pairs with 1-based row numbers, so that
validation errors point at a line a user can open. Failures are `RlhfkitError`s with a one-line
message (`DataError`s naming the file, and the row where there is one); no library traceback
text reaches the user.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rlhfkit.data.formats import Example, Format, type_name, validate_rows
from rlhfkit.errors import DataError, RlhfkitError

JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
DATA_FILE_SUFFIXES = JSON_SUFFIXES + PARQUET_SUFFIXES + (".csv",)
"""Endings that mark a name as a file, never a dataset on the Hub."""

MAX_ROW_BYTES = 16 * 1024 * 1024
"""The longest line of a JSON lines file, in bytes (16 MiB). A longer line is a `DataError`
naming it, read no further than the limit: a file without newlines or a pasted binary cannot
fill the memory. Real rows are far shorter, and text past `max_length` tokens is cut anyway."""

# What the Hub accepts as a dataset id: `name` or `owner/name`, letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")

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
        DataError: a malformed, non-UTF-8, too deeply nested or too long (`MAX_ROW_BYTES`)
            line, a line that is not a JSON object, a missing or unreadable file, a directory
            that is not a saved dataset, or a dataset with no rows.
        RlhfkitError: a Hub dataset that could not be loaded.
    """
    source = Path(path)
    suffix = source.suffix.lower()
    try:
        is_dir, is_file, exists = source.is_dir(), source.is_file(), source.exists()
    except OSError as error:  # e.g. a name longer than the file system allows
        message = f"not a usable path: {error.strerror or _short(error)}"
        raise DataError(str(path), None, None, message) from None
    if is_dir:
        rows = _read_saved_dataset(source)
    elif is_file and suffix in JSON_SUFFIXES:
        rows = _read_json(source)
    elif is_file and suffix in PARQUET_SUFFIXES:
        rows = _read_parquet(source)
    elif exists:
        raise DataError(
            str(path),
            None,
            None,
            f"unsupported file type '{suffix or source.name}'; use .jsonl, .json, .parquet, "
            "a directory saved with datasets' save_to_disk, or a dataset name",
        )
    elif suffix in DATA_FILE_SUFFIXES:
        raise DataError(str(path), None, None, "no such file")
    elif _looks_like_local_path(str(path)):
        raise DataError(str(path), None, None, "no such file or directory")
    else:
        rows = _read_hub(str(path))
    if not rows:
        raise DataError(str(path), None, None, "the dataset has no rows")
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
    """Whether a name that exists neither as a file nor as a folder was meant as a local path.

    Such a name fails at once with "no such file"; sent to the Hub, a typo would only become a
    network error half a minute later. The rule looks at the name and at most one folder:
    - the Hub takes only `name` or `owner/name` made of letters, digits, '-', '_' and '.',
      never starting with '.' or '-'; anything else (`./x`, `a/b/c`, `~/x`, `C:\\x`) is a path;
    - `owner/name` whose `owner` is a folder here (`data/typo` when `data/` exists) is a path.
    Names ending in a data-file extension are caught before this (`DATA_FILE_SUFFIXES`).
    """
    if not _HUB_ID.fullmatch(name) or name.startswith((".", "-")):
        return True
    owner, slash, _ = name.partition("/")
    return bool(slash) and Path(owner).is_dir()


def _short(error: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _read_json(path: Path) -> Rows:
    try:
        if path.suffix.lower() == ".json" and _holds_array(path):
            return _read_json_array(path)
        rows = []
        for line_number, line in _json_lines(path):
            if line.strip():
                rows.append((line_number, _parse_object(path, line_number, line)))
        return rows
    except DataError:
        if path.suffix.lower() == ".json":
            _refuse_one_object(path)
        raise
    except OSError as error:
        message = f"could not read the file: {_short(error)}"
        raise DataError(str(path), None, None, message) from None


def _json_lines(path: Path) -> Iterator[tuple[int, str]]:
    r"""`(line_number, line)` of a JSON lines file, split on "\n" only ("\r\n" read too).

    Not `str.splitlines()`: it also breaks at U+2028, U+2029 and U+0085, which JSON allows raw
    inside strings. Each line is read up to `MAX_ROW_BYTES` and decoded on its own, so an
    error names the line.
    """
    with open(path, "rb") as file:
        for line_number in count(1):
            raw = file.readline(MAX_ROW_BYTES + 1)
            if not raw:
                return
            line = raw.removesuffix(b"\n")
            if len(line) > MAX_ROW_BYTES:
                limit = f"{MAX_ROW_BYTES // 2**20} MiB"
                message = f"the line is longer than the limit of {limit} ({MAX_ROW_BYTES} bytes)"
                raise DataError(str(path), line_number, None, message)
            # utf-8-sig also reads files that start with a byte order mark.
            encoding = "utf-8-sig" if line_number == 1 else "utf-8"
            yield line_number, _decode(path, line_number, line.removesuffix(b"\r"), encoding)


def _decode(path: Path, row: int | None, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        where = f"byte {error.start + 1}" + (" of the line" if row is not None else "")
        message = f"not UTF-8 text (invalid byte 0x{data[error.start]:02x} at {where})"
        raise DataError(str(path), row, None, message) from None


def _parse_object(path: Path, line_number: int, line: str) -> dict:
    row = _parse_json(path, line_number, line)
    if not isinstance(row, dict):
        got = _json_type(row)
        raise DataError(str(path), line_number, None, f"expected a JSON object, got {got}")
    return row


class _DuplicateKey(ValueError):
    pass


def _object_without_repeats(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object as a dict, refusing a key given twice, which `json.loads` would settle
    silently by keeping the last (the config files refuse it too)."""
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return row


def _parse_json(path: Path, row: int | None, text: str) -> Any:
    """`json.loads`, with every way it can fail as a one-line `DataError`."""
    try:
        return json.loads(text, object_pairs_hook=_object_without_repeats)
    except json.JSONDecodeError as error:
        # A whole array spans many lines, so there the position is a line, not a row number.
        line = f"line {error.lineno}, " if row is None else ""
        message = f"malformed JSON: {error.msg} ({line}column {error.colno})"
    except _DuplicateKey as error:
        message = f"key {error.args[0]!r} given twice in one object (JSON would keep the last)"
    except RecursionError:
        message = "JSON nested too deeply to read"
    except ValueError as error:  # e.g. an integer past Python's 4300-digit limit
        message = f"malformed JSON: {_short(error)}"
    raise DataError(str(path), row, None, message)


_PEEK_BYTES = 64 * 1024


def _holds_array(path: Path) -> bool:
    """Whether a `.json` file holds one array: its first character past blanks is '['."""
    with open(path, "rb") as file:
        chunk = file.read(_PEEK_BYTES).removeprefix(codecs.BOM_UTF8)
        while chunk and not chunk.strip():
            chunk = file.read(_PEEK_BYTES)
    return chunk.lstrip().startswith(b"[")


def _refuse_one_object(path: Path) -> None:
    """A `.json` file that is one JSON object over several lines (a pretty-printed row, or an
    export such as {"data": [...]}) is neither of the two layouts: say so, not that its second
    line is malformed."""
    try:
        document = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (ValueError, RecursionError):
        return  # not one JSON document: the line's own error stands
    if isinstance(document, dict):
        keys = ", ".join(repr(key) for key in list(document)[:5])
        message = (
            f"the file is one JSON object (keys {keys}); a .json file holds an array of rows "
            "([{...}, {...}]) or one row per line (JSON lines)"
        )
        raise DataError(str(path), None, None, message)


def _read_json_array(path: Path) -> Rows:
    """A `.json` file holding one array of objects; row number = position in the array. The
    array is one JSON document, so it is read whole (`MAX_ROW_BYTES` is for JSON lines)."""
    items = _parse_json(path, None, _decode(path, None, path.read_bytes(), "utf-8-sig"))
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
        message = f"could not read the Parquet file: {_short(error)}"
        raise DataError(str(path), None, None, message) from None
    return list(enumerate(records, start=1))


def _read_saved_dataset(path: Path) -> Rows:
    import datasets  # imported here: importing it takes about a second

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises FileNotFoundError, ValueError, ...
        message = f"not a dataset directory saved with save_to_disk: {_short(error)}"
        raise DataError(str(path), None, None, message) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(f"'{name}'" for name in loaded) or "none"
            message = f"the saved dataset has no 'train' split (splits: {splits})"
            raise DataError(str(path), None, None, message)
        loaded = loaded["train"]
    return list(enumerate(loaded.to_list(), start=1))


def _read_hub(name: str) -> Rows:
    import datasets  # imported here: importing it takes about a second
    from huggingface_hub import constants

    unreachable = not constants.HF_HUB_OFFLINE and not hub_host_resolves()
    try:
        with offline_mode() if unreachable else contextlib.nullcontext():
            loaded = datasets.load_dataset(name, split="train")
    except Exception as error:  # offline, not found, no train split, bad config, ...
        why = (
            " (the Hub cannot be reached from here: only the local cache was tried)"
            if unreachable
            else ""
        )
        raise RlhfkitError(f"could not load dataset '{name}'{why}: {_short(error)}") from None
    return list(enumerate(loaded.to_list(), start=1))


def hub_host_resolves() -> bool:
    """Whether the Hub's host name resolves. Where it does not (no network), every request of
    `datasets` would be retried for about 25 s before the cache is tried or the name refused."""
    from huggingface_hub import constants

    try:
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def offline_mode():
    """`datasets` and `huggingface_hub` in offline mode, as with HF_HUB_OFFLINE=1 (both read
    the variable once, at import): a cached dataset loads, any other name fails at once."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
