"""`advice`: short open-ended replies to everyday questions, judged by a hidden gold annotator.

The gold annotator encodes several preferences at once, the way a human rater weighs them:
on topic (tips about the question asked), informative (several distinct tips), polite (a
friendly opener or closer, nothing rude), a sensible length, and no repetition. It plays the
human of the seeds: it simulates labels (see `annotator.py`) and evaluates policies;
it is never a training reward unless a run asks for it. The demonstrations are written by
uneven "writers" (`advice_writer.py`), so the SFT model's replies vary in quality and
comparisons carry information.
"""

import random

from rlhfkit.data.formats import PromptExample, SFTExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.tasks import advice_critique
from rlhfkit.tasks.advice_bank import CLOSERS, FILLER, OPENERS, RUDE, TOPICS
from rlhfkit.tasks.advice_writer import TOPIC_OF_TIP, split_sentences, write_reply

TOPIC_OF_QUESTION = {
    question: topic for topic, bank in TOPICS.items() for question in bank["questions"]
}

# Gold weights: what the hidden annotator values, in reward units.
ON_TOPIC_TIP, MAX_USEFUL_TIPS = 1.0, 4
OFF_TOPIC_TIP, FILLER_SENTENCE, RUDE_SENTENCE = -1.0, -0.5, -2.0
REPEATED_SENTENCE, UNKNOWN_SENTENCE = -1.0, -1.0
POLITE_OPENER, POLITE_CLOSER = 0.5, 0.5
MAX_SENTENCES, LONG_PENALTY = 6, -0.5


def gold_score(topic: str, response: str) -> float:
    """The hidden annotator's score of one reply to a question on `topic`."""
    sentences = split_sentences(response)
    if not sentences:
        return -3.0
    score, seen, useful_tips = 0.0, set(), 0
    for sentence in sentences:
        if sentence in seen:
            score += REPEATED_SENTENCE
            continue
        seen.add(sentence)
        if TOPIC_OF_TIP.get(sentence) == topic:
            useful_tips += 1
        elif sentence in TOPIC_OF_TIP:
            score += OFF_TOPIC_TIP
        elif sentence in FILLER:
            score += FILLER_SENTENCE
        elif sentence in RUDE:
            score += RUDE_SENTENCE
        elif sentence not in OPENERS and sentence not in CLOSERS:
            score += UNKNOWN_SENTENCE
    score += ON_TOPIC_TIP * min(useful_tips, MAX_USEFUL_TIPS)
    score += POLITE_OPENER * (sentences[0] in OPENERS) + POLITE_CLOSER * (sentences[-1] in CLOSERS)
    score += LONG_PENALTY * max(0, len(sentences) - MAX_SENTENCES)
    return score


def topic_of_prompt(prompt: str) -> str:
    """The topic of one of the task's questions given as text; KeyError for any other prompt
    (a reward source turns it into an error naming the sample)."""
    question = _question_of(prompt)
    if question not in TOPIC_OF_QUESTION:
        raise KeyError(f"not an advice prompt (unknown question): {prompt[:60]!r}")
    return TOPIC_OF_QUESTION[question]


def _question_of(prompt: str) -> str:
    return prompt.strip().removeprefix("User:").removesuffix("Assistant:").strip()


def _prompt_text(question: str) -> str:
    return f"User: {question}\nAssistant:"


class AdviceTask:
    name = "advice"
    description = "short advice replies judged by a hidden multi-preference gold annotator"

    def _question(self, rng: random.Random) -> tuple[str, str]:
        topic = rng.choice(sorted(TOPICS))
        return topic, _prompt_text(rng.choice(TOPICS[topic]["questions"]))

    def sft_examples(self, n: int, rng: random.Random) -> list[SFTExample]:
        examples = []
        for _ in range(n):
            topic, prompt = self._question(rng)
            examples.append(SFTExample(prompt=prompt, completion=write_reply(rng, topic)))
        return examples

    def prompts(self, n: int, rng: random.Random) -> list[PromptExample]:
        out = []
        for _ in range(n):
            topic, prompt = self._question(rng)
            out.append(
                PromptExample(
                    prompt=prompt, answer=None, metadata={"task": self.name, "topic": topic}
                )
            )
        return out

    def prompt_example(self, prompt: str) -> PromptExample:
        """A prompt given as text (e.g. read from a pairs file) with the topic the gold score
        needs."""
        if not isinstance(prompt, str):
            raise RlhfkitError("a conversation, not one of the task's questions as text")
        try:
            topic = topic_of_prompt(prompt)
        except KeyError as error:
            raise RlhfkitError(error.args[0]) from None
        return PromptExample(
            prompt=prompt, answer=None, metadata={"task": self.name, "topic": topic}
        )

    @property
    def principles(self):
        """The critique-and-revise principles the gold annotator values (`advice_critique.py`)."""
        return list(advice_critique.PRINCIPLES)

    def critique_examples(self, n: int, rng: random.Random) -> list[SFTExample]:
        """`n` critique-and-revise demonstrations, two rows each (critique, then revision)."""
        demos = advice_critique.critique_demos(n, rng, self._question)
        return [
            SFTExample(prompt=p, completion=c)
            for demo in demos
            for p, c in advice_critique.demo_rows(demo)
        ]

    def one_flaw_pairs(self, n: int, rng: random.Random) -> list[dict]:
        """`n` preference rows of equally long replies, one with a sentence breaking a principle."""
        demos = advice_critique.critique_demos(n, rng, self._question, flaw_rate=1.0)
        return advice_critique.one_flaw_pairs(demos, rng)

    def prompt_problem(self, prompt: PromptExample) -> tuple[str, str] | None:
        # the gold annotator judges a reply by its question's topic
        topic = prompt.metadata.get("topic")
        if topic is not None:
            known = ", ".join(sorted(TOPICS))
            return None if topic in TOPICS else ("topic", f"{topic!r} is not one of {known}")
        if isinstance(prompt.prompt, str) and _question_of(prompt.prompt) in TOPIC_OF_QUESTION:
            return None
        return "prompt", (
            f"not one of task {self.name}'s questions, and no 'topic': its gold annotator "
            f"judges only those (`rlhfkit tasks export {self.name}` writes them)"
        )

    def reward(self, prompt: PromptExample, response: str) -> float:
        """The gold annotator's noise-free score (a prompt read without its topic is looked up)."""
        topic = prompt.metadata.get("topic") or topic_of_prompt(prompt.prompt)
        return gold_score(topic, response)

    def evaluate(self, prompts: list[PromptExample], responses: list[str]) -> dict[str, float]:
        scores = [self.reward(p, r) for p, r in zip(prompts, responses)]
        lengths = [len(split_sentences(r)) for r in responses]
        return {
            "gold_score": sum(scores) / max(1, len(scores)),
            "sentences": sum(lengths) / max(1, len(lengths)),
        }
