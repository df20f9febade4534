"""Telling a dataset's format from its columns, so users need not say it."""

from pathlib import Path

from rlhfkit.data.formats import Format
from rlhfkit.data.loading import read_rows
from rlhfkit.errors import DataError, RlhfkitError


def format_of_columns(columns: set[str]) -> Format:
    """TRL's column conventions: responses = ranking, chosen/rejected = preference,
    completions + labels = step-labelled, completion, messages or text = SFT, prompt alone =
    prompts."""
    if "responses" in columns:
        return Format.RANKING
    if "chosen" in columns or "rejected" in columns:
        return Format.PREFERENCE
    if "completions" in columns and "labels" in columns:
        return Format.STEPS
    if "completion" in columns or "messages" in columns or "text" in columns:
        return Format.SFT
    if "prompt" in columns:
        return Format.PROMPT
    raise RlhfkitError(f"cannot tell the data format from the columns {sorted(columns)}")


def detect_format(path: str | Path) -> Format:
    rows = read_rows(path)
    row_number, first_row = rows[0]
    try:
        fmt = format_of_columns(set(first_row))
    except RlhfkitError as error:
        raise RlhfkitError(f"{path}: row {row_number}: {error}") from None
    if fmt is Format.SFT and isinstance(first_row.get("label"), bool):
        # TRL's unpaired preferences, named as the SFT check names them (formats.py), not
        # called SFT data by the commands that need pairs or rankings
        raise DataError(
            str(path),
            row_number,
            "label",
            "a completion labelled good or bad is TRL's unpaired preference (KTO) data, which "
            "rlhfkit does not train on; give preference pairs (prompt, chosen, rejected) or "
            "rankings (prompt, responses)",
        )
    return fmt
