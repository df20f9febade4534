import json

import pytest

from rlhfkit.data.detect import detect_format
from rlhfkit.data.formats import Format
from rlhfkit.errors import RlhfkitError


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_trl_unpaired_preferences_are_refused_by_name(tmp_path):
    # docs/data.md: TRL's unpaired preferences (completion + boolean label, KTO) are refused by
    # name, not read as SFT data by the commands that need pairs or rankings
    path = write_rows(tmp_path / "kto.jsonl", [{"prompt": "Q", "completion": " a", "label": True}])
    with pytest.raises(RlhfkitError, match=r"row 1: field 'label': .*unpaired preference \(KTO\)"):
        detect_format(path)


def test_a_label_column_that_is_not_a_bool_leaves_sft_data_alone(tmp_path):
    path = write_rows(tmp_path / "sft.jsonl", [{"prompt": "Q", "completion": " a", "label": "x"}])
    assert detect_format(path) is Format.SFT
