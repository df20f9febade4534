import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks.collect import label_responses
from rlhfkit.tasks.registry import get_task
from rlhfkit.tasks.sentiment import (
    POSITIVE_CUTOFF,
    SentimentTask,
    film_of,
    positive_repeats,
    prompt_text,
    write_continuation,
)
from rlhfkit.tasks.sentiment_bank import NEGATIVE, NEUTRAL, OPENINGS, POSITIVE, TITLES
from tests.test_cli import assert_one_line_error, run_main

SRC = Path(__file__).resolve().parents[2] / "src"
ANY_PROMPT = PromptExample("Review: Blue Hour runs 97 minutes.")


@pytest.fixture(scope="module")
def task() -> SentimentTask:
    return SentimentTask()


def test_the_data_is_the_same_for_a_seed_and_differs_across_seeds(task):
    def draw(seed: int):
        rng = random.Random(seed)
        return task.prompts(50, rng), task.sft_examples(50, rng)

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert SentimentTask().films == task.films


def test_film_facts_do_not_depend_on_the_process_hash_seed():
    # the facts are drawn from a string-seeded generator; any use of hash() or set order would
    # make them change with PYTHONHASHSEED, and a run's prompts with them
    code = (
        "import random; from rlhfkit.tasks.sentiment import SentimentTask; "
        "t = SentimentTask(); print([p.prompt for p in t.prompts(20, random.Random(0))])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(SRC)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1 and "Review: " in outputs.pop()


def test_several_hundred_distinct_prompts(task):
    every = {prompt_text(film, opening) for film in task.films for opening in OPENINGS}
    assert len(every) == len(TITLES) * len(OPENINGS) >= 500
    drawn = task.prompts(3000, random.Random(0))
    assert len({p.prompt for p in drawn}) >= 500
    assert {p.prompt for p in drawn} <= every
    for prompt in drawn[:50]:
        assert prompt.metadata == {"task": "sentiment", "film": prompt.metadata["film"]}
        assert prompt.metadata["film"] in prompt.prompt


def test_every_opening_leaves_the_sentiment_open(task):
    scores = {task.reward(ANY_PROMPT, prompt_text(f, o)) for f in task.films for o in OPENINGS}
    assert scores == {0.0}


@pytest.mark.parametrize(
    "bank, polarity", [(POSITIVE, 1), (NEGATIVE, -1), (NEUTRAL, 0)], ids=["pos", "neg", "neu"]
)
def test_every_sentence_scores_its_polarity_for_every_film(task, bank, polarity):
    for sentence in bank:
        for film in task.films:
            score = task.reward(ANY_PROMPT, film.fill(sentence))
            if polarity == 0:
                assert score == 0.0, (sentence, film.title)
            else:
                assert score * polarity >= POSITIVE_CUTOFF, (sentence, film.title, score)


def test_gold_reward_direction_on_hand_written_continuations(task):
    glowing = " An absolute delight. I loved every minute and the cast is wonderful."
    mild = " It is a good film."
    neutral = " It was filmed in Lisbon in 1987 and runs two hours."
    harsh = " A dull, ugly mess. The worst film I have seen this year."
    scores = [task.reward(ANY_PROMPT, text) for text in (glowing, mild, neutral, harsh)]
    assert scores[0] > scores[1] > scores[2] == 0.0 > scores[3]
    assert scores[0] > 0.8 and scores[3] < -0.8
    assert all(-1.0 <= score <= 1.0 for score in scores)
    # only the continuation is scored: a glowing prompt does not lift a neutral continuation
    glowing_prompt = PromptExample("Review: A wonderful, beautiful film.")
    assert task.reward(glowing_prompt, neutral) == 0.0


def test_demonstrations_write_every_polarity_without_repeating_themselves(task):
    examples = task.sft_examples(600, random.Random(0))
    scores = [task.reward(ANY_PROMPT, e.completion) for e in examples]
    share = lambda keep: sum(map(keep, scores)) / len(scores)  # noqa: E731
    assert share(lambda s: s >= POSITIVE_CUTOFF) > 0.3
    assert share(lambda s: s <= -POSITIVE_CUTOFF) > 0.25
    assert share(lambda s: s == 0.0) > 0.1
    assert len(set(scores)) > 100  # graded, not three values: comparisons carry information
    for example in examples:
        sentences = example.completion.strip().split(". ")
        assert example.completion.startswith(" ") and len(sentences) == len(set(sentences))
        assert positive_repeats(example.completion, task.analyzer.lexicon) == 0.0


def test_two_simulated_annotators_agree_on_about_72_5_percent_of_pairs(task):
    # K = 4 demonstrations per prompt stand in for a model's samples, as in the demo's collect
    rng = random.Random(0)

    def groups(n: int):
        out = []
        for prompt in task.prompts(n, rng):
            film = film_of(prompt.metadata["film"])
            out.append((prompt, [write_continuation(rng, film) for _ in range(4)]))
        return out

    collection = label_responses(
        task, groups(300), groups(600), target_agreement=0.725, rng=random.Random(1)
    )
    assert collection.agreement == pytest.approx(0.725, abs=0.03)  # measured: 0.734
    assert 1e-3 < collection.temperature < 10  # reachable: not clamped at either end
    assert collection.agreement < collection.bayes_limit < 1.0


def test_positive_repeats_hand_values(task):
    lexicon = task.analyzer.lexicon
    assert positive_repeats("great great great great", lexicon) == pytest.approx(3 / 4)
    assert positive_repeats("A great film with a great cast.", lexicon) == pytest.approx(1 / 7)
    assert positive_repeats("Good, good, GOOD!", lexicon) == pytest.approx(2 / 3)
    assert positive_repeats("fine fine fine", lexicon) == 0.0  # mildly positive: not counted
    assert positive_repeats("dull dull dull", lexicon) == 0.0
    assert positive_repeats("", lexicon) == 0.0


def test_evaluate_flags_a_repetitive_positive_response(task):
    honest = " The cast is excellent."  # 4 words
    harsh = " It is a tedious, ugly film."  # 6 words
    plain = " It came out in 1987."  # 5 words
    hacked = " great great great great"  # 4 words
    responses = [honest, harsh, plain, hacked]
    metrics = task.evaluate([ANY_PROMPT] * 4, responses)
    assert set(metrics) == {
        "gold_score",
        "positive_share",
        "positive_repeats",
        "distinct_1",
        "words",
    }
    scores = [task.reward(ANY_PROMPT, r) for r in responses]
    assert metrics["gold_score"] == pytest.approx(sum(scores) / 4)
    # VADER prefers the hacked response to the honest one: the gold score alone cannot tell
    assert scores[3] > scores[0] > scores[2] == 0.0 > scores[1]
    assert metrics["positive_share"] == pytest.approx(2 / 4)
    assert metrics["positive_repeats"] == pytest.approx((3 / 4) / 4)
    # 19 words; "great" x4 and "it" x2, "is" x2 (lower-cased, punctuation kept): 19 - 3 - 1 - 1
    assert metrics["distinct_1"] == pytest.approx(14 / 19)
    assert metrics["words"] == pytest.approx(19 / 4)
    honest_only = task.evaluate([ANY_PROMPT] * 3, responses[:3])
    assert honest_only["positive_repeats"] == 0.0
    assert metrics["distinct_1"] < honest_only["distinct_1"]


def test_the_task_is_registered_and_reads_any_prompt():
    task = get_task("sentiment")
    assert isinstance(task, SentimentTask)
    example = task.prompt_example("Review: anything at all")
    assert example.metadata["task"] == "sentiment"
    assert task.reward(example, " I loved it.") > 0.5


def test_without_vader_the_task_is_a_one_line_error_naming_the_extra(monkeypatch):
    # None in sys.modules makes `import` fail as if the package were not installed
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    with pytest.raises(RlhfkitError) as caught:
        get_task("sentiment")
    assert "pip install -e '.[sentiment]' in the rlhfkit checkout" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_importing_rlhfkit_does_not_need_vader():
    code = (
        "import sys; sys.modules['vaderSentiment'] = None; "
        "import rlhfkit.cli, rlhfkit.tasks.registry as r; print(sorted(r.TASKS))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "sentiment" in done.stdout


def test_grpo_runs_on_the_sentiment_task_from_the_command_line(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    args = [
        "grpo",
        f"model={tiny_model_dir}",
        "task=sentiment",
        "reward=task",
        "max_steps=2",
        "train_prompts=16",
        "prompts_per_step=2",
        "group_size=4",
        "mini_batch_size=8",
        "max_new_tokens=8",
        "eval_prompts=4",
        "eval_max_new_tokens=8",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    ]
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "held-out sentiment after step 2: gold_score " in out
    rows = [json.loads(line) for line in (tmp_path / "runs" / "grpo" / "metrics.jsonl").open()]
    steps = [row for row in rows if "reward_mean" in row]
    assert [row["step"] for row in steps] == [1, 2]
    # reward=task trains on the gold score itself: the two means are of the same numbers
    for row in steps:
        assert row["reward_mean"] == pytest.approx(row["gold_score"], abs=1e-6)
        assert -1.0 <= row["gold_score"] <= 1.0
    evals = [row for row in rows if "eval_positive_repeats" in row]
    assert evals and 0.0 <= evals[-1]["eval_positive_share"] <= 1.0


def test_without_vader_a_run_stops_at_once_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "vaderSentiment", None)
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "tasks",
        "export",
        "sentiment",
        "--out",
        tmp_path,
    )
    assert_one_line_error(code, err, "pip install -e '.[sentiment]'")
    assert not any(tmp_path.iterdir())
