import json

import pytest

from rlhfkit.data.formats import Format, PromptExample
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.critique import Revision
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice import AdviceTask
from rlhfkit.tasks.advice_bank import RUDE, TOPICS
from rlhfkit.train.constitutional import CritiqueConfig, gold_report, run_critique

TIPS = TOPICS["sleep"]["tips"]
PROMPT = PromptExample(
    "User: How can I sleep better at night?\nAssistant:", metadata={"topic": "sleep"}
)


def test_gold_report_by_hand():
    chains = [
        [Revision(PROMPT.prompt, f" {TIPS[0]} {RUDE[0]}", "polite", "c", f" {TIPS[0]}")],  # -1 -> 1
        [Revision(PROMPT.prompt, f" {TIPS[0]}", "polite", "c", f" {TIPS[0]}")],  # 1 -> 1
        [Revision(PROMPT.prompt, f" {TIPS[0]} {TIPS[1]}", "polite", "c", f" {TIPS[1]} ")],
    ]  # 2 -> 1
    report = gold_report(AdviceTask(), [PROMPT] * 3, chains)
    # exact: float64 means and counts over n, not float32's 0.3333333432674408 in report.json
    assert report["gold_before"] == (-1 + 1 + 2) / 3 and report["gold_after"] == 1.0
    assert report["raised"] == 1 / 3 and report["lowered"] == 1 / 3
    assert report["raised_of_changed"] == 1 / 2  # the second chain did not change


def test_run_critique_writes_sft_rows_preferences_and_report(tmp_path, tiny_model_dir):
    cfg = CritiqueConfig(
        model=str(tiny_model_dir), num_prompts=4, max_new_tokens=8, judge_model=str(tiny_model_dir)
    )
    result = run_critique(cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report == result.report and report["prompts"] == 4
    assert report["principles"] == ["polite", "on_topic", "no_repeats"]
    records = [
        json.loads(line) for line in (tmp_path / "run" / "revisions.jsonl").read_text().splitlines()
    ]
    assert len(records) == 4 * 3
    sft = load_examples(result.sft, Format.SFT)
    assert [row.completion for row in sft] == [chain[-1].revision for chain in result.chains]
    # the report's gold numbers are those of the records
    task = AdviceTask()
    prompts = [task.prompt_example(row.prompt) for row in sft]
    before = [task.reward(p, chain[0].response) for p, chain in zip(prompts, result.chains)]
    assert report["gold_before"] == pytest.approx(sum(before) / 4)
    assert report["judged_pairs"] == sum(
        chain[-1].revision.strip() != chain[0].response.strip() for chain in result.chains
    )
    assert (
        report["preference_rows"]
        == len(result.preferences.read_text().splitlines())
        <= report["judged_pairs"]
    )


def test_run_critique_needs_a_model_and_principles(tmp_path, tiny_model_dir):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(RlhfkitError, match="needs model=PATH"):
        run_critique(CritiqueConfig(), run)
    with pytest.raises(RlhfkitError, match="principles=PATH: task 'arith' has no principles"):
        run_critique(CritiqueConfig(model=str(tiny_model_dir), task="arith"), run)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hi?"}\n')
    untasked = CritiqueConfig(model=str(tiny_model_dir), task=None, prompts_data=str(prompts))
    with pytest.raises(RlhfkitError, match=r"needs principles=PATH \(or a task that has some\)$"):
        run_critique(untasked, run)  # was "task 'None' has no principles"


def test_a_missing_judge_model_is_refused_before_any_reply_is_sampled(
    tmp_path, tiny_model_dir, monkeypatch
):
    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the judge was checked")

    monkeypatch.setattr("rlhfkit.train.constitutional.sample_responses", no_sampling)
    cfg = CritiqueConfig(model=str(tiny_model_dir), num_prompts=2, judge_model=str(tmp_path / "no"))
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(RlhfkitError, match=r"^model directory .*no does not exist$"):
        run_critique(cfg, run)
