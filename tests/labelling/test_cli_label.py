"""`rlhfkit label export | stats | import` from the command line."""

import json
import os
import subprocess
import sys

import pytest

from rlhfkit import cli
from rlhfkit.labelling.candidates import read_labels, write_labels
from rlhfkit.labelling.records import Item, Submission

ITEMS = [Item("a", "Q1?", ("x", "y", "z")), Item("b", "Q2?", ("p", "q"))]
SUBMISSIONS = [
    Submission("a", "ann", (1, 0, 2), (0, 1, 2), seconds=3.0),
    Submission("a", "bob", (1, 0, 1), (2, 1, 0), seconds=5.0),
    Submission("b", "ann", None, (1, 0), flags={1: "unsafe"}),  # skipped, one reply flagged
]


def test_export_writes_rankings_and_pairs_and_stats_prints_agreement(tmp_path, capsys):
    folder = write_labels(tmp_path / "labels", ITEMS, SUBMISSIONS)
    cli.run(["label", "export", str(folder), "--out", str(tmp_path / "rankings.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "rankings.jsonl").read_text().splitlines()]
    assert [(r["labeller"], r["responses"], r["ranks"]) for r in rows] == [
        ("ann", ["y", "x", "z"], [0, 1, 2]),
        ("bob", ["y", "x", "z"], [0, 1, 1]),
    ]
    cli.run(
        ["label", "export", str(folder), "--format", "pairs", "--out", str(tmp_path / "p.jsonl")]
    )
    pairs = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 + 2  # ann: 3 ordered pairs; bob: y over x and y over z
    cli.run(["label", "export", str(folder), "--format", "flags", "--out", str(tmp_path / "f")])
    flags = [json.loads(line) for line in (tmp_path / "f").read_text().splitlines()]
    assert [(f["item_id"], f["response"], f["flag"], f["skipped"]) for f in flags] == [
        ("b", "q", "unsafe", True)
    ]
    capsys.readouterr()
    cli.run(["label", "stats", str(folder), "--json"])
    stats = json.loads(capsys.readouterr().out)
    # by hand: ann y > x > z, bob y > x = z; they agree on (x, y) and (y, z), not on (x, z);
    # tau-b = (2 concordant - 0 discordant) / sqrt(3 * (3 - 1 tie)) = 0.8165
    assert stats["agreement"]["pairwise"] == pytest.approx(2 / 3)
    assert stats["agreement"]["kendall_tau_b"] == pytest.approx(2 / 6**0.5)
    assert (stats["submissions"], stats["skipped"]) == (3, 1)


def test_a_missing_labels_folder_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["rlhfkit", "label", "stats", str(tmp_path / "none")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "none" in err[0]


def run_main(monkeypatch, capsys, *argv: str) -> tuple[int, list[str]]:
    """`rlhfkit ARGV` as the command line runs it, for a command that fails: (exit status,
    stderr lines)."""
    monkeypatch.setattr("sys.argv", ["rlhfkit", *argv])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def write_ranker_export(path) -> str:
    task = {
        "id": 1,
        "data": {
            "prompt": "Say hi.",
            "items": [{"id": "a", "body": "hi"}, {"id": "b", "body": "yo"}],
        },
        "annotations": [
            {"result": [{"type": "ranker", "value": {"ranker": ["b", "a"]}}], "completed_by": 3}
        ],
    }
    path.write_text(json.dumps([task]))
    return str(path)


def test_import_refuses_an_out_that_holds_files_or_is_a_file(tmp_path, capsys, monkeypatch):
    export = write_ranker_export(tmp_path / "ls.json")
    labels = write_labels(tmp_path / "labels", ITEMS, SUBMISSIONS)
    before = {path.name: path.read_bytes() for path in labels.iterdir()}
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out, message in ((labels, "already holds files"), (afile, "is a file")):
        argv = ["label", "import", "label-studio-ranker", export, "--out", str(out)]
        status, err = run_main(monkeypatch, capsys, *argv)
        assert status == 2 and len(err) == 1
        assert err[0].startswith(f"error: {out}") and message in err[0]
    assert {path.name: path.read_bytes() for path in labels.iterdir()} == before
    assert afile.read_text() == "keep"
    # an empty folder is a new one
    (tmp_path / "empty").mkdir()
    cli.run(["label", "import", "label-studio-ranker", export, "--out", str(tmp_path / "empty")])
    assert read_labels(tmp_path / "empty")[1][0].ranks == (1, 0)


def test_export_to_a_folder_or_under_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    labels = write_labels(tmp_path / "labels", ITEMS, SUBMISSIONS)
    (tmp_path / "afile").write_text("")
    for out in (tmp_path, tmp_path / "afile" / "rankings.jsonl"):
        status, err = run_main(
            monkeypatch, capsys, "label", "export", str(labels), "--out", str(out)
        )
        assert status == 2 and len(err) == 1 and err[0].startswith(f"error: cannot write {out}: ")


@pytest.mark.parametrize("name", ["candidates.jsonl", "submissions.jsonl", "labels.db"])
def test_export_refuses_to_write_over_the_labels_folders_own_files(
    tmp_path, capsys, monkeypatch, name
):
    labels = write_labels(tmp_path / "labels", ITEMS, SUBMISSIONS)
    before = {path.name: path.read_bytes() for path in labels.iterdir()}
    out = labels / ".." / "labels" / name
    status, err = run_main(monkeypatch, capsys, "label", "export", str(labels), "--out", str(out))
    assert status == 2 and err == [f"error: --out {out} is one of the labels folder's own files"]
    assert {path.name: path.read_bytes() for path in labels.iterdir()} == before


@pytest.mark.parametrize("options", [[], ["--json"]])
def test_stats_into_a_closed_pipe_ends_quietly(tmp_path, options):
    labels = write_labels(tmp_path / "labels", ITEMS, SUBMISSIONS)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone, as `| head -1` goes after one line
    command = [sys.executable, "-c", "from rlhfkit.cli import main; main()"]
    try:
        result = subprocess.run(
            [*command, "label", "stats", str(labels), *options],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.stderr == ""  # no BrokenPipeError traceback
    assert result.returncode == 141  # 128 + SIGPIPE, as a shell reports `tool | head`
