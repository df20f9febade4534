import dataclasses
import json
import logging
import random
import re

import pytest
import torch

from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.feedback.judge import PairJudgements, judge_length
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.advice_bank import RUDE, TOPICS
from rlhfkit.train.rlaif import (
    JudgeConfig,
    agreement_report,
    distinct_pairs,
    judge_sft_config,
    run_judge,
)
from rlhfkit.train.sft import SFTConfig

FAST_SFT = SFTConfig(
    max_steps=40,
    batch_size=16,
    lr=3e-3,
    warmup_steps=5,
    eval_every=0,
    sample_every=0,
    save_every=0,
    progress=False,
    tensorboard=False,
)


def tip_or_rude_pairs(n: int, rng: random.Random) -> list[dict]:
    """An on-topic tip is always better than a rude remark, by the labels and by the gold score."""
    rows = []
    for _ in range(n):
        topic = rng.choice(sorted(TOPICS))
        prompt = f"User: {rng.choice(TOPICS[topic]['questions'])}\nAssistant:"
        rows.append(
            {
                "prompt": prompt,
                "chosen": " " + rng.choice(TOPICS[topic]["tips"]),
                "rejected": " " + rng.choice(RUDE),
            }
        )
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_data")
    return (
        write_jsonl(root / "train.jsonl", tip_or_rude_pairs(200, random.Random(1))),
        write_jsonl(root / "heldout.jsonl", tip_or_rude_pairs(40, random.Random(2))),
    )


def test_a_trained_judge_learns_the_labels_an_untrained_one_does_not(
    tmp_path, tiny_model_dir, data
):
    train, heldout = data
    cfg = JudgeConfig(
        model=str(tiny_model_dir), train_pairs=train, pairs=heldout, task="advice", sft=FAST_SFT
    )
    trained = run_judge(cfg, prepare_run_dir(tmp_path / "trained", resume=False, overwrite=False))
    untrained = run_judge(
        JudgeConfig(judge_model=str(tiny_model_dir), pairs=heldout, task="advice"),
        prepare_run_dir(tmp_path / "untrained", resume=False, overwrite=False),
    )
    assert trained.report["judge_vs_labels"] >= 0.9 > untrained.report["judge_vs_labels"]
    # the labels here always agree with gold, and so does the judge wherever it agrees with them
    assert trained.report["labels_vs_gold"] == 1.0 and trained.report["gold_ordered_pairs"] == 40
    assert trained.report["judge_vs_gold"] == trained.report["judge_vs_labels"]
    # both orders of every training pair, and the report on disk
    assert len((tmp_path / "trained" / "judge_sft.jsonl").read_text().splitlines()) == 400
    assert json.loads((tmp_path / "trained" / "agreement.json").read_text()) == trained.report
    rows = load_examples(trained.preferences, Format.PREFERENCE)
    assert len(rows) == trained.report["preference_rows"] > 0
    assert sum(row.chosen.strip() not in RUDE for row in rows) >= 0.9 * len(rows)
    # the judge keeps the length it learned at, so that a later judge_model= asks within it:
    # the same judge, given, judges the pairs as it did right after training
    tokenizer = load_tokenizer(trained.judge_dir)
    assert tokenizer.model_max_length == FAST_SFT.max_length
    judge = load_causal_lm(trained.judge_dir)
    positions = judge.config.max_position_embeddings
    assert judge_length(judge, tokenizer) == min(FAST_SFT.max_length, positions)
    given = run_judge(
        JudgeConfig(judge_model=str(trained.judge_dir), pairs=heldout, task="advice"),
        prepare_run_dir(tmp_path / "given", resume=False, overwrite=False),
    )
    assert given.report["judge_vs_labels"] == trained.report["judge_vs_labels"]


def test_judge_needs_pairs_and_a_judge(tmp_path, data):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    with pytest.raises(RlhfkitError, match="needs pairs=PATH"):
        run_judge(JudgeConfig(judge_model="x"), run)
    with pytest.raises(RlhfkitError, match="model=PATH and train_pairs=PATH"):
        run_judge(JudgeConfig(pairs=data[1]), run)
    # a given judge with the settings that train one: they were silently ignored
    for given, named in (
        ({"model": "m"}, "model= trains"),
        ({"train_pairs": data[0]}, "train_pairs= trains"),
        ({"sft": dataclasses.replace(JudgeConfig().sft, max_steps=5)}, "sft.* trains"),
        ({"model": "m", "train_pairs": data[0]}, "model= and train_pairs= train"),
    ):
        with pytest.raises(ConfigError, match=f"^{re.escape(named)} a judge"):
            run_judge(JudgeConfig(judge_model="x", pairs=data[1], **given), run)


def test_pairs_the_gold_annotator_cannot_score_stop_the_run_before_training(
    tmp_path, tiny_model_dir, data
):
    foreign = write_jsonl(
        tmp_path / "foreign.jsonl",
        [
            json.loads(open(data[1]).readline()),  # one of the task's questions
            {"prompt": "Q: 2 + 2?\nA:", "chosen": " 4.", "rejected": " 5."},
        ],
    )
    conversation = write_jsonl(
        tmp_path / "conversation.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Hi?"}],
                "chosen": [{"role": "assistant", "content": "Hello."}],
                "rejected": [{"role": "assistant", "content": "Go."}],
            }
        ],
    )
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = JudgeConfig(
        model=str(tiny_model_dir), train_pairs=data[0], pairs=foreign, task="advice", sft=FAST_SFT
    )
    # the file and row are named, not only the prompt
    with pytest.raises(RlhfkitError, match=r"foreign.jsonl: row 2: field 'prompt': not an advice"):
        run_judge(cfg, run)
    with pytest.raises(RlhfkitError, match=r"row 1: field 'prompt': a conversation, not one"):
        run_judge(dataclasses.replace(cfg, pairs=conversation), run)  # was an AttributeError
    assert not (tmp_path / "run" / "judge").exists()
    with pytest.raises(RlhfkitError, match="task 'arith' cannot score prompts read from a file"):
        run_judge(dataclasses.replace(cfg, task="arith"), run)


def test_a_judge_trained_from_a_pretrained_model_has_its_sft_lr_checked_first(
    tmp_path, smollm2_config_dir, data
):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = JudgeConfig(model=str(smollm2_config_dir), train_pairs=data[0], pairs=data[1])
    with pytest.raises(RlhfkitError, match=r"^sft\.lr=0\.003 is far too large"):
        run_judge(cfg, run)
    assert not (tmp_path / "run" / "judge").exists()
    forced = dataclasses.replace(cfg, force_lr=True)
    assert judge_sft_config(forced, tmp_path / "rows.jsonl").force_lr  # the judge's SFT too
    with pytest.raises(RlhfkitError, match="no tokenizer"):
        run_judge(forced, run)


def test_the_judge_sft_keys_rlhfkit_judge_fills_are_refused_by_name(tmp_path):
    from rlhfkit.errors import ConfigError
    from rlhfkit.runtime.config import load_config
    from rlhfkit.train.rlaif import judge_sft_config

    overrides = ["model=m", "seed=3", "max_nonfinite_skips=6", "sft.max_steps=7"]
    sft = judge_sft_config(load_config(JudgeConfig, overrides=overrides), tmp_path / "rows.jsonl")
    assert (sft.model, sft.seed, sft.max_nonfinite_skips, sft.max_steps) == ("m", 3, 6, 7)
    assert sft.train_data == str(tmp_path / "rows.jsonl")
    refused = r"^sft.seed is set by rlhfkit judge from seed=; set seed= instead$"
    with pytest.raises(ConfigError, match=refused):
        judge_sft_config(load_config(JudgeConfig, overrides=["seed=3", "sft.seed=4"]), tmp_path)


def test_a_pair_of_equal_replies_is_dropped_and_counted_not_trained_on(caplog):
    # it would teach " A" and " B" for the same comparison prompt (was: trained on, "0 dropped")
    same = {"prompt": "User: Hi?\nAssistant:", "chosen": " Hello.", "rejected": " Hello. "}
    differ = {"prompt": "User: Hi?\nAssistant:", "chosen": " Hello.", "rejected": " Go."}
    with caplog.at_level(logging.INFO, logger="rlhfkit"):
        assert distinct_pairs([same, differ], "p.jsonl") == [differ]
    assert "p.jsonl: 2 rows: 1 kept, 1 dropped (chosen equals rejected: 1)" in caplog.text
    with pytest.raises(DataError, match="^p.jsonl: every pair's chosen equals its rejected"):
        distinct_pairs([same], "p.jsonl")


def test_the_agreement_reports_shares_are_counts_over_n_as_json_writes_them():
    # 29 of 50 pairs judged the label's way, 29 verdicts flip with the order: agreement.json
    # held "judge_vs_labels": 0.5799999833106995 (a float32 mean), now 0.58
    first_better = torch.tensor([0.8] * 29 + [0.3] * 21)
    prob_ab = torch.tensor([0.8] * 29 + [0.3] * 21)
    prob_ba = torch.tensor([0.8] * 29 + [0.7] * 21)  # A twice, a flip, for the first 29
    report = agreement_report(PairJudgements(first_better, prob_ab, prob_ba), gold=None)
    assert report["judge_vs_labels"] == 0.58 and report["flip_rate"] == 0.58
    assert '"judge_vs_labels": 0.58}' in json.dumps(report)
    gold = (torch.tensor([1.0] * 13 + [0.0] * 37), torch.tensor([0.0] * 13 + [1.0] * 37))
    report = agreement_report(PairJudgements(first_better, prob_ab, prob_ba), gold)
    assert report["judge_vs_gold"] == (13 + 21) / 50 and report["labels_vs_gold"] == 13 / 50
