"""docs/reliability.md counts the catalogue's bad inputs kind by kind: the counts are those of
the `CASES` lists, so a case added here cannot leave the page behind."""

import re
from pathlib import Path

from tests.reliability import (
    test_bad_arguments,
    test_bad_configs,
    test_bad_data,
    test_bad_filesystem,
    test_bad_models,
    test_bad_rewards,
)

PAGE = Path(__file__).parents[2] / "docs" / "reliability.md"
KINDS = {
    "data files and rows": test_bad_data,
    "configs and overrides": test_bad_configs,
    "model directories": test_bad_models,
    "reward sources": test_bad_rewards,
    "command-line arguments": test_bad_arguments,
    "file systems": test_bad_filesystem,
}


def test_the_page_counts_every_kind_of_bad_input_and_their_sum():
    text = PAGE.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| ([^|(]+?)(?: \([^|]*\))? \| (\d+) \|$", text, re.MULTILINE))
    assert {kind: int(rows[kind]) for kind in KINDS} == {
        kind: len(module.CASES) for kind, module in KINDS.items()
    }
    total = sum(len(module.CASES) for module in KINDS.values())
    assert f"holds {total}\nbad inputs" in text or f"holds {total} bad inputs" in text
