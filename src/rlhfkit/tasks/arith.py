"""`arith`: multi-step arithmetic word problems with worked, step-by-step solutions.

Every step is an equation "a op b = c" that can be checked on its own, so there is a
verifiable outcome reward (RLVR: is the final answer right) and a verifiable process reward
(is each step right). The demonstrations are uneven, as human ones are:
- a share of the writers skip the working and state only the answer ("shortcut"). A small model
  that imitates them must do two operations at once and mostly guesses; showing the working is
  what a verifiable reward teaches it (the seeds' RLVR: RL elicits step-by-step reasoning);
- a share of the worked solutions carries one wrong step (the error propagates to the answer).
"""

import random
import re
from dataclasses import dataclass

from rlhfkit.data.formats import PromptExample, SFTExample, StepsExample

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lena")
ITEMS = ("apples", "stamps", "coins", "shells", "marbles", "books", "pens", "cards", "stickers")
ADD_PHRASES = ("buys {n} more", "finds {n} more", "gets {n} more", "is given {n} more")
SUB_PHRASES = ("gives away {n}", "loses {n}", "sells {n}", "uses {n}")
MUL_PHRASES = {2: "doubles them"}

STEP_PATTERN = re.compile(r"(-?\d+) ([+\-*]) (-?\d+) = (-?\d+)")  # flawed chains can go below zero
ANSWER_PATTERN = re.compile(r"The answer is (-?\d+)")


@dataclass(frozen=True)
class Step:
    left: int
    op: str
    right: int
    result: int

    def text(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}."


def apply_op(left: int, op: str, right: int) -> int:
    return {"+": left + right, "-": left - right, "*": left * right}[op]


def _random_steps(rng: random.Random, num_steps: int, max_operand: int) -> tuple[int, list[Step]]:
    start = rng.randint(2, max_operand)
    value, steps = start, []
    for _ in range(num_steps):
        op = rng.choice(["+", "-"] + (["*"] if value <= max_operand else []))
        if op == "+":
            right = rng.randint(1, max_operand)
        elif op == "-":
            right = rng.randint(0, value)
        else:
            right = 2
        result = apply_op(value, op, right)
        steps.append(Step(value, op, right, result))
        value = result
    return start, steps


def _question(rng: random.Random, start: int, steps: list[Step]) -> str:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    clauses = []
    for step in steps:
        if step.op == "+":
            clauses.append(rng.choice(ADD_PHRASES).format(n=step.right))
        elif step.op == "-":
            clauses.append(rng.choice(SUB_PHRASES).format(n=step.right))
        else:
            clauses.append(MUL_PHRASES[step.right])
    actions = ", then ".join(clauses)
    return f"Q: {name} has {start} {item}, {actions}. How many {item} does {name} have now?\nA:"


def solution_text(steps: list[Step]) -> str:
    return " " + " ".join(step.text() for step in steps) + f" The answer is {steps[-1].result}."


def shortcut_text(steps: list[Step]) -> str:
    """The answer without the working."""
    return f" The answer is {steps[-1].result}."


def _flawed(rng: random.Random, steps: list[Step]) -> list[Step]:
    """One step gets a wrong result; later steps compute correctly from the wrong value."""
    bad = rng.randrange(len(steps))
    out, value = [], None
    for i, step in enumerate(steps):
        left = step.left if value is None else value
        result = apply_op(left, step.op, step.right)
        if i == bad:
            wrong = result + rng.choice([-1, 1]) * rng.randint(1, 10)
            result = wrong if wrong >= 0 else result + rng.randint(1, 10)
        out.append(Step(left, step.op, step.right, result))
        value = result
    return out


def parse_answer(response: str) -> int | None:
    match = ANSWER_PATTERN.search(response)
    return int(match.group(1)) if match else None


def parse_steps(response: str) -> list[Step]:
    return [Step(int(a), op, int(b), int(c)) for a, op, b, c in STEP_PATTERN.findall(response)]


def step_labels(truth: list[Step], written: list[Step]) -> list[bool]:
    """Step k is right when it is exactly the k-th step of the true solution."""
    return [k < len(truth) and step == truth[k] for k, step in enumerate(written)]


def _readable_steps(steps) -> bool:
    try:
        [Step(*step) for step in steps]
    except TypeError:
        return False
    return True


class ArithTask:
    name = "arith"
    description = "multi-step arithmetic word problems; verifiable answers and steps"

    def __init__(
        self,
        flawed_fraction: float = 0.2,
        shortcut_fraction: float = 0.0,
        min_steps: int = 3,
        max_steps: int = 3,
        max_operand: int = 9,
    ):
        self.flawed_fraction, self.shortcut_fraction = flawed_fraction, shortcut_fraction
        self.min_steps, self.max_steps, self.max_operand = min_steps, max_steps, max_operand

    def _problem(self, rng: random.Random) -> tuple[str, list[Step]]:
        start, steps = _random_steps(
            rng, rng.randint(self.min_steps, self.max_steps), self.max_operand
        )
        return _question(rng, start, steps), steps

    def sft_examples(self, n: int, rng: random.Random) -> list[SFTExample]:
        examples = []
        for _ in range(n):
            prompt, steps = self._problem(rng)
            if (
                self.shortcut_fraction > 0 and rng.random() < self.shortcut_fraction
            ):  # no draw when off
                examples.append(SFTExample(prompt=prompt, completion=shortcut_text(steps)))
                continue
            if rng.random() < self.flawed_fraction:
                steps = _flawed(rng, steps)
            examples.append(SFTExample(prompt=prompt, completion=solution_text(steps)))
        return examples

    def prompts(self, n: int, rng: random.Random) -> list[PromptExample]:
        out = []
        for _ in range(n):
            prompt, steps = self._problem(rng)
            metadata = {
                "task": self.name,
                "steps": [[s.left, s.op, s.right, s.result] for s in steps],
            }
            out.append(
                PromptExample(prompt=prompt, answer=str(steps[-1].result), metadata=metadata)
            )
        return out

    def prompt_problem(self, prompt: PromptExample) -> tuple[str, str] | None:
        # the outcome reward and the accuracy read the answer; the steps, where a file has them,
        # are what the process reward and the step accuracy check
        if prompt.answer is None:
            return "answer", f"missing: task {self.name} checks each final answer against it"
        if "steps" in prompt.metadata and not _readable_steps(prompt.metadata["steps"]):
            return "steps", "not a list of [left, op, right, result] (`rlhfkit tasks export arith`)"
        return None

    def reward(self, prompt: PromptExample, response: str) -> float:
        """Outcome reward (RLVR): 1.0 when the final answer is right, else 0.0."""
        answer = parse_answer(response)
        return float(answer is not None and str(answer) == prompt.answer)

    def final_answer(self, response: str) -> str | None:
        """The answer a response states (as `PromptExample.answer` writes it), None if none: the
        vote of majority voting (maj@k)."""
        answer = parse_answer(response)
        return None if answer is None else str(answer)

    def step_rewards(self, prompt: PromptExample, response: str) -> list[float]:
        """Process reward: 1.0 / 0.0 per written step (empty when no step was written)."""
        truth = [Step(*s) for s in prompt.metadata["steps"]]
        return [float(ok) for ok in step_labels(truth, parse_steps(response))]

    def process_rewards(self, prompt: PromptExample, response: str) -> list[tuple[int, float]]:
        """Process supervision: (character where it ends, reward) for every written step, then
        the final answer with the outcome reward (at the answer, or the response's end if none)."""
        truth = [Step(*s) for s in prompt.metadata["steps"]]
        matches = list(STEP_PATTERN.finditer(response))
        written = [
            Step(int(a), op, int(b), int(c)) for a, op, b, c in (m.groups() for m in matches)
        ]
        out = [(m.end(), float(ok)) for m, ok in zip(matches, step_labels(truth, written))]
        answer = ANSWER_PATTERN.search(response)
        return out + [(answer.end() if answer else len(response), self.reward(prompt, response))]

    def step_examples(self, n: int, rng: random.Random) -> list[StepsExample]:
        """Step-labelled solutions for a process reward model: half correct, half with one
        wrong step, every step labelled by the verifier."""
        out = []
        for _ in range(n):
            prompt, truth = self._problem(rng)
            written = _flawed(rng, truth) if rng.random() < 0.5 else truth
            texts = [step.text() for step in written] + [f"The answer is {written[-1].result}."]
            labels = step_labels(truth, written) + [written[-1].result == truth[-1].result]
            out.append(StepsExample(prompt=prompt, completions=tuple(texts), labels=tuple(labels)))
        return out

    def evaluate(self, prompts: list[PromptExample], responses: list[str]) -> dict[str, float]:
        """Accuracy (the gold score) and, over the prompts that carry their steps, the share of
        written steps that are right (no `step_accuracy` when none does: a prompt file with
        answers only)."""
        correct = [self.reward(p, r) for p, r in zip(prompts, responses)]
        with_steps = [(p, r) for p, r in zip(prompts, responses) if "steps" in p.metadata]
        steps = [x for p, r in with_steps for x in self.step_rewards(p, r)]
        accuracy = sum(correct) / max(1, len(correct))
        if not with_steps:
            return {"accuracy": accuracy, "gold_score": accuracy}
        return {
            "accuracy": accuracy,
            "step_accuracy": sum(steps) / max(1, len(steps)),
            "gold_score": accuracy,
        }
