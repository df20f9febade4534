"""Reading rows from JSON lines, Parquet, saved datasets and the Hub, and the errors for each."""

import json
import random
import socket
import time

import datasets
import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data.formats import Format, PreferenceExample, SFTExample
from rlhfkit.data.loading import (
    MAX_ROW_BYTES,
    hub_host_resolves,
    load_examples,
    offline_mode,
    read_rows,
)
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


def test_a_key_given_twice_in_a_row_is_refused_not_settled_silently(tmp_path):
    nested = '{"prompt": [{"role": "user", "content": "a", "content": "b"}], "completion": "c"}'
    path = write_jsonl(tmp_path / "sft.jsonl", [json.dumps(PAIRS[0]), nested])
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (
        f"{path}: row 2: key 'content' given twice in one object (JSON would keep the last)"
    )
    array = tmp_path / "rows.json"
    array.write_text('[{"prompt": "a", "completion": "b", "prompt": "c"}]')
    with pytest.raises(DataError, match="key 'prompt' given twice"):
        read_rows(array)


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


def test_a_json_file_that_is_one_object_over_several_lines_is_named_as_such(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text(json.dumps(PAIRS[0], indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"the file is one JSON object \(keys 'prompt', "):
        read_rows(path)
    path.write_text(json.dumps({"data": PAIRS}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"keys 'data'\); a .json file holds an array of rows"):
        read_rows(path)
    # the same in a .jsonl file is a broken JSON line, and one object on one line is one row
    jsonl = write_jsonl(tmp_path / "prefs.jsonl", json.dumps(PAIRS[0], indent=2).split("\n"))
    with pytest.raises(DataError, match=r"row 1: malformed JSON"):
        read_rows(jsonl)
    path.write_text(json.dumps(PAIRS[0]), encoding="utf-8")
    assert read_rows(path) == [(1, PAIRS[0])]


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


# ----- hostile files: separators, huge, deep, binary, not UTF-8 --------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_unicode_line_separators_inside_json_strings_are_not_line_breaks(tmp_path, separator):
    # JSON allows these raw inside strings; only "\n" ends a JSON line.
    row = {"prompt": f"a{separator}b", "completion": "c"}
    path = write_jsonl(tmp_path / "sft.jsonl", [json.dumps(row, ensure_ascii=False)] * 2)
    assert read_rows(path) == [(1, row), (2, row)]


def test_windows_line_endings_are_read(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"".join(json.dumps(row).encode() + b"\r\n" for row in PAIRS))
    assert read_rows(path) == [(1, PAIRS[0]), (2, PAIRS[1])]


def test_a_line_past_the_row_limit_is_an_error_naming_it(tmp_path):
    path = tmp_path / "sft.jsonl"
    huge = json.dumps({"prompt": "p", "completion": "x" * MAX_ROW_BYTES})
    path.write_text(json.dumps(PAIRS[0]) + "\n" + huge + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (
        f"{path}: row 2: the line is longer than the limit of 16 MiB ({MAX_ROW_BYTES} bytes)"
    )


def test_a_line_just_within_the_row_limit_is_read(tmp_path):
    path = tmp_path / "sft.jsonl"
    row = {"prompt": "p", "completion": ""}
    row["completion"] = "x" * (MAX_ROW_BYTES - len(json.dumps(row)))
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    assert path.stat().st_size == MAX_ROW_BYTES + 1
    assert read_rows(path) == [(1, row)]


def test_deeply_nested_json_is_a_data_error(tmp_path):
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_jsonl(tmp_path / "sft.jsonl", [json.dumps(PAIRS[0]), deep])
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}: row 2: JSON nested too deeply to read"
    array = tmp_path / "sft.json"
    array.write_text("[" + deep + "]", encoding="utf-8")
    with pytest.raises(DataError, match=r"sft.json: JSON nested too deeply to read$"):
        read_rows(array)


def test_an_integer_too_long_for_python_is_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", ['{"margin": ' + "1" * 5000 + "}"])
    with pytest.raises(DataError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: row 1: malformed JSON: ") and "\n" not in message


def test_a_line_that_is_not_utf8_names_its_row(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(json.dumps(PAIRS[0]).encode() + b'\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == (
        f"{path}: row 2: not UTF-8 text (invalid byte 0xe9 at byte 16 of the line)"
    )


def test_a_json_array_that_is_not_utf8(tmp_path):
    path = tmp_path / "sft.json"
    path.write_bytes(b'[{"prompt": "caf\xe9"}]')
    with pytest.raises(DataError) as caught:
        read_rows(path)
    assert str(caught.value) == f"{path}: not UTF-8 text (invalid byte 0xe9 at byte 17)"


def binary_bytes(size: int = 4096) -> bytes:
    # Seeded, so the bytes (and whichever check they trip first) are the same each run.
    return random.Random(0).randbytes(size)


@pytest.mark.parametrize("name", ["data.jsonl", "data.json", "data.parquet", "data.bin"])
def test_a_binary_file_is_a_one_line_data_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(binary_bytes())
    with pytest.raises(DataError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_a_binary_file_without_newlines_stops_at_the_row_limit(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(binary_bytes(64).replace(b"\n", b" ") * (MAX_ROW_BYTES // 64 + 1))
    with pytest.raises(DataError, match=r"row 1: the line is longer than the limit of 16 MiB"):
        read_rows(path)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.parquet"])
def test_an_empty_file_is_a_one_line_data_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DataError) as caught:
        read_rows(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_a_folder_of_other_files_is_a_one_line_data_error(tmp_path):
    folder = tmp_path / "not_saved"
    folder.mkdir()
    write_jsonl(folder / "sft.jsonl", [json.dumps(PAIRS[0])])
    with pytest.raises(DataError) as caught:
        read_rows(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder}: not a dataset directory saved with save_to_disk: ")
    assert "\n" not in message


def test_without_network_a_hub_name_fails_at_once_and_names_why(monkeypatch):
    # no name resolves (as on a machine without network): the cache alone is tried, in well
    # under the ~25 s of retries a lookup otherwise takes, and offline mode is undone after
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert not hub_host_resolves()
    before = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    started = time.monotonic()
    with pytest.raises(RlhfkitError) as caught:
        read_rows("nobody/no-such-dataset")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith(
        "could not load dataset 'nobody/no-such-dataset' (the Hub cannot be reached from here: "
        "only the local cache was tried): "
    )
    assert "\n" not in message
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before


def test_offline_mode_restores_both_settings():
    before = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    with pytest.raises(ValueError), offline_mode():
        assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
        raise ValueError
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == before


# ----- local paths never go to the Hub; Hub names still do -------------------------------------


@pytest.fixture
def hub(monkeypatch):
    """`datasets.load_dataset` replaced by a recorder that serves the first pair, so no test
    calls the network; the names it was called with are in the returned list."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = []

    def load_dataset(name, split):
        asked.append(name)
        return datasets.Dataset.from_list(PAIRS[:1])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return asked


@pytest.mark.parametrize(
    "name, message",
    [
        ("dat/sft.jsonl", "no such file"),
        ("dat/sft.json", "no such file"),
        ("dat/sft.parquet", "no such file"),
        ("dat/sft.csv", "no such file"),
        ("sft.JSONL", "no such file"),
        ("data/typo", "no such file or directory"),  # data/ exists here
        ("./sft", "no such file or directory"),
        ("dat/sub/sft", "no such file or directory"),
        ("~/sft", "no such file or directory"),
        ("my data/sft", "no such file or directory"),  # a space: no Hub id has one
    ],
)
def test_a_missing_local_path_fails_at_once_without_the_hub(
    tmp_path, monkeypatch, hub, name, message
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as caught:
        read_rows(name)
    assert str(caught.value) == f"{name}: {message}"
    assert hub == []


@pytest.mark.parametrize("name", ["x" * 5000 + ".jsonl", "dat/" + "x" * 5000])
def test_a_name_too_long_for_the_file_system_is_a_one_line_data_error(hub, name):
    with pytest.raises(DataError) as caught:
        read_rows(name)
    assert str(caught.value) == f"{name}: not a usable path: File name too long"
    assert hub == []


@pytest.mark.parametrize("name", ["owner/name", "name", "dat/sft", "org-x/set_v1.2"])
def test_hub_names_that_are_not_local_paths_still_go_to_the_hub(tmp_path, monkeypatch, hub, name):
    monkeypatch.chdir(tmp_path)
    assert read_rows(name) == [(1, PAIRS[0])]
    assert hub == [name]
