"""Reading rows from JSON lines, Parquet, saved datasets and the Hub, and the errors for each."""

import json

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.formats import Format, PreferenceExample, SFTExample
from rlhfkit.data.loading import load_examples, read_rows
from rlhfkit.errors import DataError, RlhfkitError

PAIRS = [
    {"prompt": "2+3=", "chosen": "5", "rejected": "6"},
    {"prompt": "1+1=", "chosen": "2", "rejected": "3", "margin": 1.5},
]


def write_jsonl(path, lines: list[str]):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----- JSON lines ------------------------------------------------------------------------------


def test_jsonl_row_numbers_are_line_numbers_counting_blank_lines(tmp_path):
    lines = [json.dumps(PAIRS[0]), "", "  ", json.dumps(PAIRS[1])]
    path = write_jsonl(tmp_path / "prefs.jsonl", lines)
    assert read_rows(path) == [(1, PAIRS[0]), (4, PAIRS[1])]


def test_load_examples_validates_into_examples(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [json.dumps(row) for row in PAIRS])
    assert load_examples(path, Format.PREFERENCE) == [
        PreferenceExample("2+3=", "5", "6", 0.0),
        PreferenceExample("1+1=", "2", "3", 1.5),
    ]


def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [json.dumps(PAIRS[0]), '{"prompt": "a",'])
    with pytest.raises(DataError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: row 2: malformed JSON: ")
    assert "\n" not in message


def test_json_line_that_is_not_an_object(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [json.dumps(PAIRS[0]), '["a", "b"]'])
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}: row 2: expected a JSON object, got array"


def test_json_file_with_one_object_per_line(tmp_path):
    path = write_jsonl(tmp_path / "prefs.json", [json.dumps(row) for row in PAIRS])
    assert read_rows(path) == [(1, PAIRS[0]), (2, PAIRS[1])]


def test_json_file_holding_an_array(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(PAIRS, indent=2), encoding="utf-8")
    assert read_rows(path) == [(1, PAIRS[0]), (2, PAIRS[1])]


def test_json_array_with_a_non_object_item(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps([PAIRS[0], 3]), encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2: expected a JSON object, got number"):
        read_rows(path)


def test_validation_error_names_the_file_and_line(tmp_path):
    lines = [json.dumps(PAIRS[0]), "", json.dumps({"prompt": "p", "chosen": 7, "rejected": "r"})]
    path = write_jsonl(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(DataError) as caught:
        load_examples(path, Format.PREFERENCE)
    assert str(caught.value) == (
        f"{path}: row 3: field 'chosen': expected a non-empty string or a list of messages, got int"
    )


def test_error_names_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "sft.jsonl", [json.dumps({"prompt": "p"})])
    with pytest.raises(DataError, match=r"^data/sft.jsonl: row 1: field 'completion': missing"):
        load_examples("data/sft.jsonl", "sft")


# ----- Parquet and saved datasets --------------------------------------------------------------


def test_parquet_rows_numbered_from_one(tmp_path):
    path = tmp_path / "prefs.parquet"
    # The row with a margin goes first: Arrow takes the columns from the first row.
    pq.write_table(pa.Table.from_pylist([PAIRS[1], PAIRS[0]]), path)
    rows = read_rows(path)
    # Arrow gives every row every column, so the absent margin reads back as None.
    assert rows == [(1, PAIRS[1]), (2, {**PAIRS[0], "margin": None})]
    assert [e.margin for e in load_examples(path, Format.PREFERENCE)] == [1.5, 0.0]


def test_parquet_conversational_rows(tmp_path):
    path = tmp_path / "sft.parquet"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pq.write_table(pa.Table.from_pylist([{"messages": messages}]), path)
    assert load_examples(path, Format.SFT) == [SFTExample(messages[:1], messages[1:])]


def test_parquet_validation_error_names_row(tmp_path):
    path = tmp_path / "prefs.parquet"
    rows = [PAIRS[0], {"prompt": "p", "chosen": "", "rejected": "r"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"prefs.parquet: row 2: field 'chosen': .*empty string"):
        load_examples(path, Format.PREFERENCE)


def test_corrupt_parquet_is_one_line_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(RlhfkitError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: could not read the Parquet file: ")
    assert "\n" not in message


def test_saved_dataset_directory(tmp_path):
    datasets.Dataset.from_list(PAIRS).save_to_disk(str(tmp_path / "saved"))
    assert [row["chosen"] for _, row in read_rows(tmp_path / "saved")] == ["5", "2"]
    assert [number for number, _ in read_rows(tmp_path / "saved")] == [1, 2]


def test_saved_dataset_dict_uses_train_split(tmp_path):
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_list(PAIRS[:1]), test=datasets.Dataset.from_list(PAIRS[1:])
    )
    splits.save_to_disk(str(tmp_path / "saved"))
    expected = [PreferenceExample("2+3=", "5", "6")]
    assert load_examples(tmp_path / "saved", Format.PREFERENCE) == expected


def test_saved_dataset_dict_without_train_split(tmp_path):
    splits = datasets.DatasetDict(test=datasets.Dataset.from_list(PAIRS))
    splits.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(RlhfkitError, match=r"has no 'train' split \(splits: 'test'\)"):
        read_rows(tmp_path / "saved")


def test_directory_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(RlhfkitError, match="not a dataset directory saved with save_to_disk"):
        read_rows(tmp_path)


# ----- missing, empty, unsupported, Hub --------------------------------------------------------


def test_missing_file_with_known_extension(tmp_path):
    with pytest.raises(RlhfkitError, match=r"prefs.jsonl: no such file$"):
        read_rows(tmp_path / "prefs.jsonl")


def test_missing_local_looking_path_does_not_go_to_the_hub(tmp_path):
    with pytest.raises(RlhfkitError, match="no such file or directory"):
        read_rows(tmp_path / "missing_dir")


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet"])
def test_empty_dataset_names_the_path(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("\n\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(RlhfkitError, match=f"{name}: the dataset has no rows"):
        read_rows(path)


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen\n", encoding="utf-8")
    with pytest.raises(RlhfkitError, match=r"unsupported file type '.csv'"):
        read_rows(path)


def test_unknown_hub_name_offline_is_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Both libraries read these variables once at import, which has already happened here;
    # without the patched constants a lookup retries the network for about half a minute.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RlhfkitError) as caught:
        read_rows("nobody/no-such-dataset")
    message = str(caught.value)
    assert message.startswith("could not load dataset 'nobody/no-such-dataset': ")
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.__suppress_context__
