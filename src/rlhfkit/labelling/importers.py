"""Rankings labelled in other tools, read into `Item` and `Submission` records so that export and
statistics work on them as on rlhfkit's own labels.

- Argilla `RankingQuestion`: the records of a dataset export (`records.to_json`, a JSON array,
  or one record a JSON line). A record's `fields` hold the prompt (`prompt_field`) and the
  responses (`response_fields`; default: every other field); a ranking answer lists the
  responses' field names with their rank, `[{"value": "reply-1", "rank": 1}, ...]` (1 = best,
  equal ranks = a tie), or just the names best first. Responses come in the v1 form (a list of
  `{"user_id", "values": {question: {"value": ...}}, "status"}`) or the v2 form
  (`{question: [{"value": ..., "user_id", "status"}]}`). Status `submitted` (or none) is a
  ranking, `discarded` a skip; drafts are left out. Records that answer other questions but
  never `question` are refused. Argilla records no time spent or shown order.
- Label Studio `Ranker` and `Pairwise`: the JSON export (a JSON array of tasks, not JSON-MIN).
  Ranker: `data[items_field]` lists `{"id", text_field: response}` and a result
  `{"type": "ranker", "value": {"ranker": [ids best first]}}` (or `{"ranker": {name: [ids]}}`);
  Ranker has no ties, so buckets are refused, and so are two items under one id. Pairwise:
  `data[response_fields[0]]` is shown on the left, `data[response_fields[1]]` on the right, and
  a result `{"type": "pairwise", "value": {"selected": "left" | "right"}}`. A cancelled
  annotation, or one with no such result, is a skip; `lead_time` is the seconds spent,
  `completed_by` the labeller.

Bad input is a `DataError` naming the file, the row (record or task, 1-based) and the field.
"""

import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from rlhfkit.data.loading import read_rows
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.labelling.records import Item, Submission, seconds_value, show_value

Labels = tuple[list[Item], list[Submission]]


class ImportSource(str, Enum):
    ARGILLA = "argilla"
    LABEL_STUDIO_RANKER = "label-studio-ranker"
    LABEL_STUDIO_PAIRWISE = "label-studio-pairwise"


class _Row:
    """One record or task being read: raises `DataError`s that name its file and row."""

    def __init__(self, path: str | Path, number: int, row: dict):
        self.path, self.number, self.row = str(path), number, row

    def fail(self, field: str | None, message: str) -> DataError:
        return DataError(self.path, self.number, field, message)

    def text(self, mapping: Any, key: str, field: str) -> str:
        value = mapping.get(key) if isinstance(mapping, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"expected a non-empty string, got {show_value(value)}")
        return value

    def item_id(self, *candidates: Any) -> str:
        """The first id the record carries, else its row number."""
        found = next((value for value in candidates if value not in (None, "")), None)
        return str(found) if found is not None else f"row-{self.number}"


def _read(path: str | Path) -> list[_Row]:
    return [_Row(path, number, row) for number, row in read_rows(path)]


def _check_unique(items: list[Item], rows: list[_Row]) -> None:
    seen = set()
    for item, row in zip(items, rows):
        if item.item_id in seen:
            raise row.fail("id", f"repeats the id {item.item_id!r} of an earlier row")
        seen.add(item.item_id)


# ---------------------------------------------------------------------------------------------
# Argilla
# ---------------------------------------------------------------------------------------------


def import_argilla(
    path: str | Path,
    *,
    question: str = "ranking",
    prompt_field: str = "prompt",
    response_fields: tuple[str, ...] = (),
) -> Labels:
    """Items and submissions of an Argilla `RankingQuestion` export (module docstring).

    Raises:
        DataError: a bad record, or records that answer questions but never `question`.
    """
    items, submissions, rows = [], [], _read(path)
    questions: set[str] = set()
    for row in rows:
        fields = row.row.get("fields")
        if not isinstance(fields, dict):
            raise row.fail("fields", f"expected an object of fields, got {show_value(fields)}")
        prompt = row.text(fields, prompt_field, f"fields.{prompt_field}")
        names = response_fields or tuple(name for name in fields if name != prompt_field)
        if len(names) < 2:
            raise row.fail("fields", "expected two or more response fields besides the prompt")
        responses = tuple(row.text(fields, name, f"fields.{name}") for name in names)
        item_id = row.item_id(row.row.get("external_id"), row.row.get("id"))
        source = {"imported_from": ImportSource.ARGILLA.value, "path": str(path)}
        items.append(Item(item_id, prompt, responses, source))
        questions |= _argilla_questions(row)
        for field, value_field, answer in _argilla_answers(row, question):
            submission = _argilla_submission(row, field, value_field, answer, item_id, names)
            if submission is not None:
                submissions.append(submission)
    _check_unique(items, rows)
    if questions and question not in questions:
        # a misspelt question would import every record as unanswered: nothing to export
        found = ", ".join(sorted(questions))
        message = f"no record answers the question {question!r}; the records answer: {found}"
        raise DataError(str(path), None, None, message)
    return items, submissions


def _argilla_questions(row: _Row) -> set[str]:
    """The questions a record holds answers to, in either export form (module docstring)."""
    responses = row.row.get("responses")
    if isinstance(responses, dict):  # v2: grouped by question
        return set(responses)
    answers = responses if isinstance(responses, list) else []
    values = [answer.get("values") for answer in answers if isinstance(answer, dict)]
    return {question for value in values if isinstance(value, dict) for question in value}


def _argilla_answers(row: _Row, question: str) -> list[tuple[str, str, dict]]:
    """(the answer's field, its value's field, {"user_id", "status", "value", ...}) of every
    user who answered `question`, from either export form; the fields name errors."""
    responses = row.row.get("responses") or []
    answers = []
    if isinstance(responses, dict):  # v2: question -> [{"value", "user_id", "status"}]
        for index, answer in enumerate(responses.get(question) or []):
            field = f"responses.{question}[{index}]"
            answers.append((field, f"{field}.value", answer))
    elif isinstance(responses, list):  # v1: [{"user_id", "values": {question: {...}}, ...}]
        for index, response in enumerate(responses):
            field = f"responses[{index}]"
            if not isinstance(response, dict):
                raise row.fail(field, f"expected an object, got {show_value(response)}")
            values = response.get("values") or {}
            answer = values.get(question) if isinstance(values, dict) else None
            if answer is None and response.get("status") != "discarded":
                continue  # this user answered other questions only
            answer = answer if isinstance(answer, dict) else {}
            merged = {**response, "value": answer.get("value")}
            answers.append((field, f"{field}.values.{question}.value", merged))
    else:
        raise row.fail("responses", f"expected a list or an object, got {show_value(responses)}")
    return answers


def _argilla_submission(
    row: _Row, field: str, value_field: str, answer: Any, item_id: str, names: tuple[str, ...]
) -> Submission | None:
    if not isinstance(answer, dict):
        raise row.fail(field, f"expected an object, got {show_value(answer)}")
    status = answer.get("status") or "submitted"
    if status not in ("submitted", "discarded"):
        return None  # a draft is not a judgement yet
    user = answer.get("user_id")
    if user in (None, ""):
        raise row.fail(f"{field}.user_id", "missing")
    ranks = None
    if status == "submitted":
        ranks = _argilla_ranks(row, value_field, answer.get("value"), names)
    return Submission(
        item_id=item_id,
        labeller=str(user),
        ranks=ranks,
        shown_order=(),  # Argilla does not record the order it showed the options in
        seconds=None,  # nor the time spent: unknown, not 0 s
        submitted_at=str(answer.get("updated_at") or answer.get("inserted_at") or ""),
    )


def _argilla_ranks(row: _Row, field: str, value: Any, names: tuple[str, ...]) -> tuple[int, ...]:
    """0-based ranks in `names` order from `[{"value": name, "rank": r}]` (r from 1, equal =
    tie) or `[name, ...]` best first."""
    if not isinstance(value, list):
        raise row.fail(field, f"expected a list of ranked responses, got {show_value(value)}")
    ranks: dict[str, int] = {}
    for position, entry in enumerate(value):
        where = f"{field}[{position}]"
        name, rank = (
            (entry, position + 1) if isinstance(entry, str) else _named_rank(row, where, entry)
        )
        if name not in names:
            raise row.fail(where, f"{name!r} is not a response field ({', '.join(names)})")
        if name in ranks:
            raise row.fail(where, f"{name!r} is ranked twice")
        ranks[name] = rank - 1
    if len(ranks) != len(names):
        missing = ", ".join(name for name in names if name not in ranks)
        raise row.fail(field, f"ranks {len(ranks)} of {len(names)} responses (missing: {missing})")
    return tuple(ranks[name] for name in names)


def _named_rank(row: _Row, where: str, entry: Any) -> tuple[str, int]:
    if not isinstance(entry, dict):
        raise row.fail(where, f"expected {{'value': name, 'rank': n}}, got {show_value(entry)}")
    rank = entry.get("rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise row.fail(
            f"{where}.rank", f"expected an integer from 1 (best), got {show_value(rank)}"
        )
    return entry.get("value"), rank


# ---------------------------------------------------------------------------------------------
# Label Studio
# ---------------------------------------------------------------------------------------------


def import_label_studio_ranker(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    items_field: str = "items",
    text_field: str = "body",
) -> Labels:
    """Items and submissions of a Label Studio export of a `List` + `Ranker` project."""
    items, submissions, rows = [], [], _read(path)
    for row in rows:
        data = _task_data(row)
        prompt = row.text(data, prompt_field, f"data.{prompt_field}")
        entries = data.get(items_field)
        if not isinstance(entries, list) or len(entries) < 2:
            raise row.fail(f"data.{items_field}", "expected a list of two or more items")
        ids, responses = [], []
        for index, entry in enumerate(entries):
            where = f"data.{items_field}[{index}]"
            if not isinstance(entry, dict) or entry.get("id") in (None, ""):
                raise row.fail(where, "expected an object with an 'id'")
            if str(entry["id"]) in ids:
                # a ranking names items by id: two items under one id would read as a tie
                raise row.fail(f"{where}.id", f"repeats the item id {str(entry['id'])!r}")
            ids.append(str(entry["id"]))
            responses.append(row.text(entry, text_field, f"{where}.{text_field}"))
        item = _label_studio_item(row, data, prompt, responses)
        items.append(item)
        for field, result_field, annotation, result in _annotations(row, "ranker"):
            ranks = None
            if result is not None:
                where = f"{result_field}.value.ranker"
                ranks = _ranker_ranks(row, where, result.get("value"), ids)
            submissions.append(_label_studio_submission(row, field, annotation, item, ranks))
    _check_unique(items, rows)
    return items, submissions


def import_label_studio_pairwise(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    response_fields: tuple[str, str] = ("text1", "text2"),
) -> Labels:
    """Items and submissions of a Label Studio export of a `Pairwise` project: the left and
    right texts are the item's two responses, the left one shown first."""
    if len(response_fields) != 2:
        raise RlhfkitError(f"Pairwise compares two texts: got response fields {response_fields}")
    items, submissions, rows = [], [], _read(path)
    for row in rows:
        data = _task_data(row)
        prompt = row.text(data, prompt_field, f"data.{prompt_field}")
        responses = [row.text(data, name, f"data.{name}") for name in response_fields]
        item = _label_studio_item(row, data, prompt, responses)
        items.append(item)
        for field, result_field, annotation, result in _annotations(row, "pairwise"):
            ranks = None
            if result is not None:
                value = result.get("value")
                selected = value.get("selected") if isinstance(value, dict) else None
                if selected not in ("left", "right"):
                    where = f"{result_field}.value.selected"
                    raise row.fail(where, f"expected 'left' or 'right', got {show_value(selected)}")
                ranks = (0, 1) if selected == "left" else (1, 0)
            submissions.append(_label_studio_submission(row, field, annotation, item, ranks))
    _check_unique(items, rows)
    return items, submissions


def _task_data(row: _Row) -> dict:
    data = row.row.get("data")
    if not isinstance(data, dict):
        raise row.fail("data", f"expected an object, got {show_value(data)}")
    return data


def _label_studio_item(row: _Row, data: dict, prompt: str, responses: list[str]) -> Item:
    # an `item_id` in the task's data (candidates sent to Label Studio) keeps rlhfkit's id
    item_id = row.item_id(data.get("item_id"), row.row.get("id"))
    source = {"imported_from": "label_studio", "path": row.path}
    return Item(item_id, prompt, tuple(responses), source)


def _annotations(row: _Row, result_type: str) -> list[tuple[str, str, dict, dict | None]]:
    """(the annotation's field, its result's field, the annotation, its first result of
    `result_type` or None) of every annotation of a task; a cancelled one has no result."""
    annotations = row.row.get("annotations") or []
    if not isinstance(annotations, list):
        raise row.fail("annotations", f"expected a list, got {show_value(annotations)}")
    out = []
    for index, annotation in enumerate(annotations):
        field = f"annotations[{index}]"
        if not isinstance(annotation, dict):
            raise row.fail(field, f"expected an object, got {show_value(annotation)}")
        results = annotation.get("result") or []
        if not isinstance(results, list):
            raise row.fail(f"{field}.result", f"expected a list, got {show_value(results)}")
        found = None
        if not annotation.get("was_cancelled"):
            found = next(
                (
                    (f"{field}.result[{i}]", r)
                    for i, r in enumerate(results)
                    if isinstance(r, dict) and r.get("type") == result_type
                ),
                None,
            )
        result_field, result = found if found else (f"{field}.result", None)
        out.append((field, result_field, annotation, result))
    return out


def _ranker_ranks(row: _Row, field: str, value: Any, ids: list[str]) -> tuple[int, ...]:
    """Ranks in the items' order from the ids best first (Label Studio's two documented forms:
    a list, or an object with one list under the tag's name)."""
    order = value.get("ranker") if isinstance(value, dict) else None
    if isinstance(order, dict):
        if len(order) != 1:
            raise row.fail(field, "Ranker buckets are not a ranking: use a Ranker without Bucket")
        order = next(iter(order.values()))
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(ids):
        got = ", ".join(map(str, order)) if isinstance(order, list) else show_value(order)
        raise row.fail(field, f"expected every item id once ({', '.join(ids)}), got {got}")
    position = {str(item_id): rank for rank, item_id in enumerate(order)}
    return tuple(position[item_id] for item_id in ids)


def _label_studio_submission(
    row: _Row, field: str, annotation: dict, item: Item, ranks: tuple[int, ...] | None
) -> Submission:
    user = annotation.get("completed_by")
    if isinstance(user, dict):  # some exports expand the user
        user = user.get("email") or user.get("id")
    if user in (None, ""):
        raise row.fail(f"{field}.completed_by", "missing")
    lead_time = annotation.get("lead_time") or 0.0
    seconds = seconds_value(lead_time)
    if seconds is None:
        raise row.fail(f"{field}.lead_time", f"expected seconds >= 0, got {show_value(lead_time)}")
    return Submission(
        item_id=item.item_id,
        labeller=str(user),
        ranks=ranks,
        # Ranker starts from the items' order, Pairwise shows left then right
        shown_order=tuple(range(len(item.responses))),
        seconds=seconds,
        submitted_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    )


IMPORTERS: dict[ImportSource, Callable[..., Labels]] = {
    ImportSource.ARGILLA: import_argilla,
    ImportSource.LABEL_STUDIO_RANKER: import_label_studio_ranker,
    ImportSource.LABEL_STUDIO_PAIRWISE: import_label_studio_pairwise,
}


def import_labels(source: ImportSource | str, path: str | Path, **options: Any) -> Labels:
    """Read `path` with the importer of `source`, passing on the options that are not None
    (`question`, `prompt_field`, `response_fields`, `items_field`, `text_field`).

    Raises:
        RlhfkitError: an unknown source, or an option that source does not take.
    """
    try:
        importer = IMPORTERS[ImportSource(source)]
    except ValueError:
        known = ", ".join(s.value for s in ImportSource)
        raise RlhfkitError(f"unknown label source {source!r}; expected one of: {known}") from None
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(inspect.signature(importer).parameters))
    if unknown:
        raise RlhfkitError(f"{ImportSource(source).value} labels take no {', '.join(unknown)}")
    return importer(path, **given)
