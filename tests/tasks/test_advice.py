import random

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.tasks.advice import (
    FILLER_SENTENCE,
    OFF_TOPIC_TIP,
    REPEATED_SENTENCE,
    RUDE_SENTENCE,
    UNKNOWN_SENTENCE,
    AdviceTask,
    gold_score,
    split_sentences,
)
from rlhfkit.tasks.advice_bank import CLOSERS, FILLER, OPENERS, RUDE, TOPICS
from rlhfkit.tasks.advice_writer import write_reply

TIPS = TOPICS["sleep"]["tips"]
OFF_TOPIC = TOPICS["coffee"]["tips"][0]


def reply(*sentences: str) -> str:
    return " " + " ".join(sentences)


def test_ideal_reply_scores_five():
    # polite opener (0.5) + four on-topic tips (4 x 1.0) + polite closer (0.5)
    assert gold_score("sleep", reply(OPENERS[0], *TIPS[:4], CLOSERS[0])) == pytest.approx(5.0)


def test_hand_scores_of_simple_replies():
    assert gold_score("sleep", reply(TIPS[0])) == pytest.approx(1.0)
    assert gold_score("sleep", reply(*TIPS[:5])) == pytest.approx(4.0)  # at most four tips count
    assert gold_score("sleep", reply(OPENERS[1], TIPS[0])) == pytest.approx(1.5)
    assert gold_score("sleep", reply(TIPS[0], CLOSERS[1])) == pytest.approx(1.5)
    assert gold_score("sleep", reply(CLOSERS[1], TIPS[0])) == pytest.approx(
        1.0
    )  # a closer must close
    assert gold_score("sleep", reply(*TIPS[:4], TIPS[4], TIPS[5], FILLER[0])) == pytest.approx(
        4 - 0.5 - 0.5
    )


@pytest.mark.parametrize(
    "bad, weight",
    [
        (OFF_TOPIC, OFF_TOPIC_TIP),
        (RUDE[0], RUDE_SENTENCE),
        (TIPS[0], REPEATED_SENTENCE),
        (FILLER[0], FILLER_SENTENCE),
        ("Bananas are yellow.", UNKNOWN_SENTENCE),
    ],
)
def test_each_flaw_lowers_the_score_by_its_weight(bad, weight):
    # opener + 3 tips + closer = 4.0 in five sentences; one more sentence stays within the
    # length limit, so only the flaw's own weight changes the score
    good = [OPENERS[0], *TIPS[:3], CLOSERS[0]]
    assert gold_score("sleep", reply(*good)) == pytest.approx(4.0)
    flawed = good[:2] + [bad] + good[2:]
    assert gold_score("sleep", reply(*flawed)) == pytest.approx(4.0 + weight)
    assert weight < 0


def test_weights_order_rude_worst():
    assert RUDE_SENTENCE < OFF_TOPIC_TIP <= REPEATED_SENTENCE < FILLER_SENTENCE < 0


def test_empty_reply_scores_minus_three():
    assert gold_score("sleep", "") == -3.0
    assert gold_score("sleep", "   ") == -3.0


def test_split_sentences():
    assert split_sentences(" Hi! How are you? Fine. ") == ["Hi!", "How are you?", "Fine."]
    assert split_sentences("") == []


def test_reward_uses_the_prompt_topic():
    task = AdviceTask()
    prompt = PromptExample("User: ...\nAssistant:", metadata={"task": "advice", "topic": "sleep"})
    assert task.reward(prompt, reply(TIPS[0])) == 1.0
    other = PromptExample("User: ...\nAssistant:", metadata={"task": "advice", "topic": "coffee"})
    assert task.reward(other, reply(TIPS[0])) == OFF_TOPIC_TIP


def test_prompts_name_a_question_of_their_topic():
    for prompt in AdviceTask().prompts(50, random.Random(0)):
        question = prompt.prompt.removeprefix("User: ").removesuffix("\nAssistant:")
        assert question in TOPICS[prompt.metadata["topic"]]["questions"]


def test_writers_are_uneven():
    rng = random.Random(0)
    scores = [gold_score("plants", write_reply(rng, "plants")) for _ in range(300)]
    assert max(scores) - min(scores) >= 3.0
    assert len(set(scores)) >= 8


def test_writers_open_politely_mostly_and_close_half_the_time():
    # an opener at a half would make the SFT model's first sentence a near tie (advice_writer)
    rng = random.Random(0)
    replies = [split_sentences(write_reply(rng, "sleep")) for _ in range(2000)]
    opened = sum(sentences[0] in OPENERS for sentences in replies) / len(replies)
    closed = sum(sentences[-1] in CLOSERS for sentences in replies) / len(replies)
    assert 0.72 < opened < 0.78
    assert 0.46 < closed < 0.54


def test_evaluate_keys_and_values():
    task = AdviceTask()
    prompts = [PromptExample("p", metadata={"topic": "sleep"})] * 2
    metrics = task.evaluate(prompts, [reply(OPENERS[0], *TIPS[:4], CLOSERS[0]), ""])
    assert set(metrics) == {"gold_score", "sentences"}
    assert metrics["gold_score"] == pytest.approx((5.0 - 3.0) / 2)
    assert metrics["sentences"] == pytest.approx(3.0)
