"""`rlhfkit label export | stats | import` from the command line."""

import json

import pytest

from rlhfkit import cli
from rlhfkit.labelling.candidates import write_labels
from rlhfkit.labelling.records import Item, Submission

ITEMS = [Item("a", "Q1?", ("x", "y", "z")), Item("b", "Q2?", ("p", "q"))]
SUBMISSIONS = [
    Submission("a", "ann", (1, 0, 2), (0, 1, 2), seconds=3.0),
    Submission("a", "bob", (1, 0, 1), (2, 1, 0), seconds=5.0),
    Submission("b", "ann", None, (1, 0)),  # skipped
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
