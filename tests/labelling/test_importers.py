import copy
import json

import pytest

from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.labelling.candidates import read_labels, write_labels
from rlhfkit.labelling.export import rankings_rows
from rlhfkit.labelling.importers import (
    IMPORTERS,
    ImportSource,
    import_argilla,
    import_label_studio_pairwise,
    import_label_studio_ranker,
    import_labels,
)
from rlhfkit.labelling.records import Submission
from rlhfkit.labelling.stats import label_stats

# Argilla 1.x FeedbackDataset records: responses are a list, one entry per user
ARGILLA_V1 = [
    {
        "external_id": "rec-1",
        "fields": {"prompt": "Say hi.", "reply-1": "hi", "reply-2": "hello", "reply-3": "go"},
        "responses": [
            {
                "user_id": "u-ann",
                "values": {
                    "ranking": {
                        "value": [
                            {"value": "reply-2", "rank": 1},
                            {"value": "reply-1", "rank": 2},
                            {"value": "reply-3", "rank": 2},
                        ]
                    },
                    "comment": {"value": "ok"},
                },
                "status": "submitted",
                "updated_at": "2024-01-02T03:04:05",
            },
            {"user_id": "u-ben", "values": {}, "status": "discarded"},
            {"user_id": "u-cy", "values": {"ranking": {"value": []}}, "status": "draft"},
            {
                "user_id": "u-dee",
                "values": {"comment": {"value": "no rank"}},
                "status": "submitted",
            },
        ],
    },
    {"fields": {"prompt": "Say bye.", "reply-1": "bye", "reply-2": "ciao", "reply-3": "later"}},
]

# Argilla 2.x `records.to_json`: responses grouped by question
ARGILLA_V2 = [
    {
        "id": "rec-9",
        "fields": {"prompt": "Name a fruit.", "a": "apple", "b": "rock"},
        "metadata": {},
        "suggestions": {},
        "responses": {
            "ranking": [
                {"value": [{"value": "a", "rank": 1}, {"value": "b", "rank": 2}], "user_id": "u1"},
                {"value": ["b", "a"], "user_id": "u2", "status": "submitted"},
            ]
        },
        "vectors": {},
        "_server_id": "f00",
    }
]

LABEL_STUDIO_RANKER = [
    {
        "id": 7,
        "data": {
            "prompt": "Say hi.",
            "items": [
                {"id": "r0", "title": "one", "body": "hi"},
                {"id": "r1", "title": "two", "body": "hello"},
                {"id": "r2", "title": "three", "body": "go"},
            ],
        },
        "annotations": [
            {
                "result": [
                    {
                        "from_name": "rank",
                        "to_name": "results",
                        "type": "ranker",
                        "value": {"ranker": ["r1", "r2", "r0"]},
                    }
                ],
                "was_cancelled": False,
                "completed_by": 3,
                "lead_time": 12.5,
                "created_at": "2024-05-01T10:00:00.000000Z",
                "updated_at": "2024-05-01T10:01:00.000000Z",
            },
            {
                "result": [{"type": "ranker", "value": {"ranker": {"rank": ["r0", "r1", "r2"]}}}],
                "completed_by": {"id": 4, "email": "eve@example.org"},
                "lead_time": 4,
            },
            {"result": [], "was_cancelled": True, "completed_by": 5, "lead_time": 1.0},
        ],
    }
]

LABEL_STUDIO_PAIRWISE = [
    {
        "id": 11,
        "data": {"prompt": "Say hi.", "text1": "hi", "text2": "go away", "item_id": "cand-1"},
        "annotations": [
            {
                "result": [
                    {
                        "from_name": "pw",
                        "to_name": "text1,text2",
                        "type": "pairwise",
                        "value": {"selected": "right"},
                    }
                ],
                "completed_by": 2,
                "lead_time": 3.0,
                "updated_at": "2024-06-01T00:00:00Z",
            },
            {"result": [], "completed_by": 8, "lead_time": 2.0},  # submitted with no choice
        ],
    }
]


def write_json(path, records) -> str:
    path.write_text(json.dumps(records))
    return str(path)


def write_json_lines(path, records) -> str:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(path)


def test_argilla_rankings_with_ties_skips_and_drafts(tmp_path):
    items, submissions = import_argilla(write_json_lines(tmp_path / "a.jsonl", ARGILLA_V1))

    assert [(i.item_id, i.prompt, i.responses) for i in items] == [
        ("rec-1", "Say hi.", ("hi", "hello", "go")),
        ("row-2", "Say bye.", ("bye", "ciao", "later")),  # no id: its row number
    ]
    assert submissions == [
        # rank 1 = best: reply-2; reply-1 and reply-3 tie
        Submission(
            "rec-1", "u-ann", (1, 0, 1), (), seconds=None, submitted_at="2024-01-02T03:04:05"
        ),
        Submission("rec-1", "u-ben", None, (), seconds=None),  # discarded: a skip
    ]


def test_argilla_v2_records_rank_by_entry_or_by_position(tmp_path):
    items, submissions = import_argilla(write_json(tmp_path / "records.json", ARGILLA_V2))

    assert [(i.item_id, i.responses) for i in items] == [("rec-9", ("apple", "rock"))]
    assert [(s.labeller, s.ranks) for s in submissions] == [("u1", (0, 1)), ("u2", (1, 0))]


def test_argilla_named_fields_and_question(tmp_path):
    record = {
        "fields": {"context": "ctx", "q": "Pick.", "x": "one", "y": "two"},
        "responses": {"order": [{"value": ["y", "x"], "user_id": "u"}]},
    }
    path = write_json(tmp_path / "r.json", [record])

    items, submissions = import_argilla(
        path, question="order", prompt_field="q", response_fields=("x", "y")
    )

    assert items[0].responses == ("one", "two") and submissions[0].ranks == (1, 0)


def test_label_studio_ranker_orders_ids_best_first(tmp_path):
    items, submissions = import_label_studio_ranker(
        write_json(tmp_path / "ls.json", LABEL_STUDIO_RANKER)
    )

    assert [(i.item_id, i.prompt, i.responses) for i in items] == [
        ("7", "Say hi.", ("hi", "hello", "go"))
    ]
    assert submissions == [
        Submission(
            "7", "3", (2, 0, 1), (0, 1, 2), seconds=12.5, submitted_at="2024-05-01T10:01:00.000000Z"
        ),
        Submission("7", "eve@example.org", (0, 1, 2), (0, 1, 2), seconds=4.0),
        Submission("7", "5", None, (0, 1, 2), seconds=1.0),  # cancelled: a skip
    ]


def test_label_studio_pairwise_left_shown_first(tmp_path):
    path = write_json(tmp_path / "pw.json", LABEL_STUDIO_PAIRWISE)

    items, submissions = import_label_studio_pairwise(path)

    assert [(i.item_id, i.responses) for i in items] == [("cand-1", ("hi", "go away"))]
    assert [(s.labeller, s.ranks, s.shown_order, s.seconds) for s in submissions] == [
        ("2", (1, 0), (0, 1), 3.0),  # "right" chosen
        ("8", None, (0, 1), 2.0),
    ]


def test_imported_labels_export_as_rankings(tmp_path):
    for source, records in (
        (ImportSource.ARGILLA, ARGILLA_V1),
        (ImportSource.LABEL_STUDIO_RANKER, LABEL_STUDIO_RANKER),
        (ImportSource.LABEL_STUDIO_PAIRWISE, LABEL_STUDIO_PAIRWISE),
    ):
        items, submissions = IMPORTERS[source](
            write_json(tmp_path / f"{source.value}.json", records)
        )
        rows = rankings_rows(items, submissions)
        assert rows, source
        assert all(row["responses"][0] != row["responses"][-1] for row in rows)
    argilla = rankings_rows(*import_argilla(write_json(tmp_path / "a.json", ARGILLA_V1)))
    assert [(r["responses"], r["ranks"]) for r in argilla] == [(["hello", "hi", "go"], [0, 1, 1])]


def test_argilla_records_no_time_and_stats_show_none(tmp_path):
    """Argilla keeps no time spent: the statistics show it unknown, not a median of 0 s."""
    items, submissions = import_argilla(write_json(tmp_path / "a.json", ARGILLA_V1))
    folder = write_labels(tmp_path / "labels", items, submissions)
    items, submissions = read_labels(folder)  # through submissions.jsonl and back
    assert [s.seconds for s in submissions] == [None, None]
    row = label_stats(items, submissions)["labellers"]["u-ann"]
    assert (row["ranked"], row["median_seconds"], row["mean_seconds"]) == (1, None, None)


def broken(records, path: list, value):
    """A deep copy of `records` with the value at `path` replaced (or deleted when None)."""
    records = copy.deepcopy(records)
    target = records
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return records


RANKING = [0, "responses", 0, "values", "ranking", "value"]


@pytest.mark.parametrize(
    "records, field, message",
    [
        (broken(ARGILLA_V1, [0, "fields"], "x"), "fields", "expected an object of fields"),
        (broken(ARGILLA_V1, [0, "fields", "prompt"], None), "fields.prompt", "non-empty string"),
        (
            broken(ARGILLA_V1, [*RANKING, 1, "rank"], 0),
            "responses[0].values.ranking.value[1].rank",
            "expected an integer from 1",
        ),
        (
            broken(ARGILLA_V1, [*RANKING, 1, "value"], "reply-9"),
            "responses[0].values.ranking.value[1]",
            "'reply-9' is not a response field",
        ),
        (
            broken(ARGILLA_V1, [*RANKING, 2], None),
            "responses[0].values.ranking.value",
            "ranks 2 of 3 responses (missing: reply-3)",
        ),
        (
            broken(ARGILLA_V1, [*RANKING, 2, "value"], "reply-1"),
            "responses[0].values.ranking.value[2]",
            "'reply-1' is ranked twice",
        ),
        (
            broken(ARGILLA_V1, [0, "responses", 0, "user_id"], None),
            "responses[0].user_id",
            "missing",
        ),
    ],
)
def test_bad_argilla_records_name_the_file_row_and_field(tmp_path, records, field, message):
    path = write_json(tmp_path / "bad.json", records)

    with pytest.raises(DataError) as caught:
        import_argilla(path)
    assert (caught.value.path, caught.value.row, caught.value.field) == (path, 1, field)
    assert message in caught.value.message
    assert len(str(caught.value).splitlines()) == 1


RESULT = [0, "annotations", 0, "result", 0]


@pytest.mark.parametrize(
    "records, field, message",
    [
        (broken(LABEL_STUDIO_RANKER, [0, "data"], None), "data", "expected an object"),
        (
            broken(LABEL_STUDIO_RANKER, [0, "data", "items", 1, "body"], None),
            "data.items[1].body",
            "non-empty string",
        ),
        (
            broken(LABEL_STUDIO_RANKER, [*RESULT, "value", "ranker"], ["r1", "r0"]),
            "annotations[0].result[0].value.ranker",
            "expected every item id once (r0, r1, r2), got r1, r0",
        ),
        (
            broken(LABEL_STUDIO_RANKER, [*RESULT, "value", "ranker"], {"best": ["r1"], "ads": []}),
            "annotations[0].result[0].value.ranker",
            "Ranker buckets are not a ranking",
        ),
        (
            broken(LABEL_STUDIO_RANKER, [0, "annotations", 0, "lead_time"], -3),
            "annotations[0].lead_time",
            "expected seconds >= 0",
        ),
        (
            broken(LABEL_STUDIO_RANKER, [0, "annotations", 0, "lead_time"], 10**400),
            "annotations[0].lead_time",
            "expected seconds >= 0, got 1000000",  # too large for a float, and cut short
        ),
        (
            broken(LABEL_STUDIO_RANKER, [0, "annotations", 0, "completed_by"], None),
            "annotations[0].completed_by",
            "missing",
        ),
    ],
)
def test_bad_label_studio_ranker_tasks_name_the_file_row_and_field(
    tmp_path, records, field, message
):
    path = write_json(tmp_path / "bad.json", records)

    with pytest.raises(DataError) as caught:
        import_label_studio_ranker(path)
    assert (caught.value.row, caught.value.field) == (1, field)
    assert message in caught.value.message


def test_a_ranker_item_id_listed_twice_is_refused_not_read_as_a_tie(tmp_path):
    task = {
        "id": 4,
        "data": {
            "prompt": "Say hi.",
            "items": [{"id": "a", "body": "hi"}, {"id": "a", "body": "yo"}],
        },
        "annotations": [
            {"result": [{"type": "ranker", "value": {"ranker": ["a", "a"]}}], "completed_by": 3}
        ],
    }

    with pytest.raises(DataError) as caught:
        import_label_studio_ranker(write_json(tmp_path / "ls.json", [task]))
    assert (caught.value.row, caught.value.field) == (1, "data.items[1].id")
    assert caught.value.message == "repeats the item id 'a'"


def test_a_question_no_record_answers_is_refused_naming_the_questions_there(tmp_path):
    path = write_json_lines(tmp_path / "a.jsonl", ARGILLA_V1)

    with pytest.raises(DataError) as caught:
        import_argilla(path, question="rank")
    assert str(caught.value) == (
        f"{path}: no record answers the question 'rank'; the records answer: comment, ranking"
    )


def test_a_pairwise_choice_other_than_left_or_right_is_refused(tmp_path):
    records = broken(LABEL_STUDIO_PAIRWISE, [*RESULT, "value", "selected"], "both")

    with pytest.raises(DataError, match="field 'annotations\\[0\\].result\\[0\\].value.selected'"):
        import_label_studio_pairwise(write_json(tmp_path / "pw.json", records))


def test_a_repeated_id_is_refused(tmp_path):
    records = LABEL_STUDIO_PAIRWISE * 2

    with pytest.raises(DataError, match="row 2: field 'id': repeats the id 'cand-1'"):
        import_label_studio_pairwise(write_json(tmp_path / "pw.json", records))


def test_import_labels_passes_the_options_a_source_takes(tmp_path):
    record = {"fields": {"q": "Pick.", "x": "one", "y": "two"}, "responses": {}}
    path = write_json(tmp_path / "r.json", [record])

    items, _ = import_labels("argilla", path, prompt_field="q", items_field=None)

    assert items[0].prompt == "Pick." and items[0].responses == ("one", "two")
    with pytest.raises(RlhfkitError, match="argilla labels take no items_field, text_field"):
        import_labels("argilla", path, items_field="items", text_field="body")
    with pytest.raises(RlhfkitError, match="unknown label source 'prodigy'; expected one of: "):
        import_labels("prodigy", path)
    with pytest.raises(RlhfkitError, match="Pairwise compares two texts"):
        import_labels("label-studio-pairwise", path, response_fields=("a", "b", "c"))
