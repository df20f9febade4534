import random

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.advice import AdviceTask, gold_score, split_sentences
from rlhfkit.tasks.advice_bank import RUDE, TOPICS
from rlhfkit.tasks.advice_critique import (
    NOTHING_WRONG,
    ON_TOPIC,
    PRINCIPLES,
    critique_demo,
    critique_demos,
    offending,
)

TIPS = TOPICS["sleep"]["tips"]
OFF_TOPIC = TOPICS["coffee"]["tips"][0]


@pytest.fixture(scope="module")
def demos():
    return critique_demos(600, random.Random(0), AdviceTask()._question)


def test_offending_sentences_by_principle():
    sentences = [TIPS[0], RUDE[0], OFF_TOPIC, TIPS[0], "Good luck!"]
    assert offending("polite", "sleep", sentences) == [1]
    assert offending("on_topic", "sleep", sentences) == [2]
    assert offending("no_repeats", "sleep", sentences) == [3]  # the second occurrence


def test_revisions_remove_exactly_the_offending_sentence_and_raise_the_gold_score(demos):
    flawed = [d for d in demos if d.offender is not None]
    assert 0.4 < len(flawed) / len(demos) < 0.6
    assert {d.principle.name for d in flawed} == {p.name for p in PRINCIPLES}
    for demo in flawed:
        sentences = split_sentences(demo.reply)
        assert offending(demo.principle.name, demo.topic, sentences) == [demo.offender]
        assert (
            split_sentences(demo.revision)
            == sentences[: demo.offender] + sentences[demo.offender + 1 :]
        )
        assert gold_score(demo.topic, demo.revision) > gold_score(demo.topic, demo.reply)
        assert demo.critique.startswith(f' "{sentences[demo.offender]}" ')


def test_a_reply_without_the_flaw_is_left_as_it_is(demos):
    clean = [d for d in demos if d.offender is None]
    for demo in clean:
        assert offending(demo.principle.name, demo.topic, split_sentences(demo.reply)) == []
        assert demo.critique == " " + NOTHING_WRONG and demo.revision == demo.reply


def test_critique_examples_are_critique_then_revision_rows():
    examples = AdviceTask().critique_examples(3, random.Random(2))
    assert len(examples) == 6
    for critique, revision in zip(examples[::2], examples[1::2]):
        assert critique.prompt.startswith("User: ") and "\nAssistant: " in critique.prompt
        assert critique.prompt.endswith("Name it.\nCritique:")
        assert revision.prompt == (
            f"{critique.prompt}{critique.completion}\nRevision request: "
            f"{revision.prompt.split('Revision request: ')[1]}"
        )
        assert revision.prompt.endswith("\nRevision:") and revision.completion.startswith(" ")


def test_on_topic_demo_of_a_fixed_draw_by_hand():
    # whatever the draw, the critique quotes the inserted off-topic tip
    demo = next(
        d
        for d in (
            critique_demo(
                "sleep",
                "User: How can I sleep better at night?\nAssistant:",
                ON_TOPIC,
                random.Random(seed),
            )
            for seed in range(50)
        )
        if d and d.offender is not None
    )
    bad = split_sentences(demo.reply)[demo.offender]
    assert bad not in TIPS and bad in {tip for t in TOPICS.values() for tip in t["tips"]}
    assert demo.critique == f' "{bad}" is off topic.'


def test_prompt_example_recovers_the_topic_for_the_gold_score():
    task = AdviceTask()
    example = task.prompt_example("User: How can I sleep better at night?\nAssistant:")
    assert example.metadata["topic"] == "sleep"
    assert (
        task.reward(
            PromptExample("User: How can I sleep better at night?\nAssistant:"), " " + TIPS[0]
        )
        == 1.0
    )
    with pytest.raises(RlhfkitError, match="not an advice prompt"):
        task.prompt_example("Q: 2 + 2?\nA:")


def test_one_flaw_pairs_are_equally_long_and_gold_prefers_the_chosen_reply():
    task = AdviceTask()
    pairs = task.one_flaw_pairs(200, random.Random(3))
    assert len(pairs) == 200
    margins = []
    for pair in pairs:
        prompt = task.prompt_example(pair["prompt"])
        margins.append(task.reward(prompt, pair["chosen"]) - task.reward(prompt, pair["rejected"]))
        chosen, rejected = split_sentences(pair["chosen"]), split_sentences(pair["rejected"])
        assert len(chosen) == len(rejected) and sum(a != b for a, b in zip(chosen, rejected)) == 1
    assert min(margins) >= 0 and sum(m > 0 for m in margins) >= 0.9 * len(margins)
