"""Critique and revise (Constitutional AI, supervised stage; Bai et al. 2022).

Given principles, the model critiques its own response against one principle, then revises
the response in the light of that critique; the revision is the response the next principle
is applied to. The final revisions are SFT data, and original-vs-revision pairs judged by an
AI judge are preference data.

The text formats continue the project's prompts ("User: ...\\nAssistant: ..."):

    User: How can I sleep better at night?
    Assistant: Keep your bedroom dark and cool. That is a silly question.
    Critique request: Is any sentence of the reply rude? Name it.
    Critique: "That is a silly question." is rude.
    Revision request: Rewrite the reply without the rude sentence.
    Revision: Keep your bedroom dark and cool.

A task can own demonstrations in this format (`AdviceTask.critique_examples`) so that a model
too small to follow instructions learns it; a real model runs through the same code.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhfkit.data.conversation import Principle, critique_prompt, revision_prompt
from rlhfkit.data.formats import Text
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.judge import PairJudgements, judge_pairs, preference_rows
from rlhfkit.rewards.reward_model import as_completion
from rlhfkit.rollout.sample import sample_responses

SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")


@dataclass(frozen=True)
class Revision:
    """One critique-and-revise step of one response."""

    prompt: Text
    response: str
    """The response critiqued: the original, or the previous principle's revision."""
    principle: str
    critique: str
    revision: str


def load_principles(path: str | Path) -> list[Principle]:
    """Principles from a YAML (or JSON) list of `{name, critique_request, revision_request}`."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise RlhfkitError(f"{path}: cannot read principles ({type(error).__name__})") from None
    if not isinstance(data, list) or not data:
        raise RlhfkitError(f"{path}: expected a non-empty list of principles")
    keys = ("name", "critique_request", "revision_request")
    principles = []
    for index, item in enumerate(data):
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) and item[k].strip() for k in keys
        ):
            raise RlhfkitError(
                f"{path}: principle {index + 1}: needs non-empty strings {', '.join(keys)}"
            )
        principles.append(Principle(*(item[k].strip() for k in keys)))
    return principles


def _one_line(text: str) -> str:
    """The first line, with one leading space (the project's completion style). A reply in
    these formats is one line; a model that goes on to write the next turn is cut there."""
    lines = text.strip().splitlines()
    return " " + lines[0].strip() if lines else ""


def _generate(
    model,
    tokenizer,
    texts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
    progress: str | None = None,
) -> list[str]:
    """One completion per text: greedy at temperature 0, else sampled; `progress` as
    `sample_responses`'s."""
    samples = sample_responses(
        model,
        tokenizer,
        texts,
        greedy=temperature == 0,
        temperature=temperature or 1.0,
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    return [_one_line(group[0]) for group in samples.texts]


def critique_and_revise(
    model,
    tokenizer,
    prompts: list[Text],
    responses: list[str] | None,
    principles: list[Principle],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[Revision]]:
    """Critique and revise each response once per principle, in order; `progress` shows a bar
    for each principle's critiques and revisions.

    Args:
        prompts: the prompts as the model answers them ("User: ...\\nAssistant:").
        responses: one response per prompt; None = the model writes them (sampled at T = 1).
        principles: applied in order; each revision is the next principle's response.
        temperature: of the critiques and revisions (0 = greedy).
    Returns:
        One chain per prompt: a `Revision` per principle. An empty revision keeps the response.
    """
    if responses is None:
        samples = sample_responses(
            model,
            tokenizer,
            list(prompts),
            max_new_tokens=max_new_tokens,
            seed=seed,
            batch_size=batch_size,
        )
        responses = [group[0] for group in samples.texts]
    if len(responses) != len(prompts):
        raise ValueError(
            f"critique_and_revise: {len(prompts)} prompts and {len(responses)} responses"
        )
    current, chains = list(responses), [[] for _ in prompts]
    common = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    for step, principle in enumerate(principles):
        critiques = _generate(
            model,
            tokenizer,
            [critique_prompt(p, r, principle) for p, r in zip(prompts, current)],
            seed=seed + 2 * step,
            progress=f"{principle.name}: critiques" if progress else None,
            **common,
        )
        asks = [revision_prompt(p, r, principle, c) for p, r, c in zip(prompts, current, critiques)]
        revisions = _generate(
            model,
            tokenizer,
            asks,
            seed=seed + 2 * step + 1,
            progress=f"{principle.name}: revisions" if progress else None,
            **common,
        )
        for i, (critique, revision) in enumerate(zip(critiques, revisions)):
            revision = revision if revision.strip() else current[i]
            chains[i].append(Revision(prompts[i], current[i], principle.name, critique, revision))
            current[i] = revision
    return chains


def revision_sft_rows(chains: list[list[Revision]]) -> list[dict]:
    """SFT rows `{"prompt", "completion"}`: each prompt with its final revision (an assistant
    message when the prompt is a conversation)."""
    return [
        {
            "prompt": chain[0].prompt,
            "completion": as_completion(chain[0].prompt, chain[-1].revision),
        }
        for chain in chains
        if chain
    ]


def changed(chain: list[Revision]) -> bool:
    """Whether the final revision differs from the original response (spacing aside)."""
    return bool(chain) and chain[-1].revision.strip() != chain[0].response.strip()


def only_deletes(response: str, revision: str) -> bool:
    """Whether the revision is the response with some sentences left out, the rest unchanged
    and in order: an edit, as opposed to a reply written anew."""
    remaining = iter(SENTENCE_BREAK.split(response.strip()))
    return all(
        any(sentence == kept for kept in remaining)
        for sentence in SENTENCE_BREAK.split(revision.strip())
    )


def revision_preference_rows(
    chains: list[list[Revision]],
    judge_model,
    judge_tokenizer,
    *,
    min_margin: float = 0.0,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[dict], PairJudgements, list[int]]:
    """Preference rows from the judge's verdict on final revision vs original response.

    Only chains whose revision changed the response are judged (the same text twice is a tie).
    Returns:
        (rows, judgements, judged): the preference rows (near-ties dropped, see
        `judge.preference_rows`), the judgements with the revision as the first response, and
        the indices of the chains judged.
    """
    judged = [i for i, chain in enumerate(chains) if changed(chain)]
    prompts = [chains[i][0].prompt for i in judged]
    revised = [as_completion(chains[i][0].prompt, chains[i][-1].revision) for i in judged]
    originals = [as_completion(chains[i][0].prompt, chains[i][0].response) for i in judged]
    judgements = judge_pairs(
        judge_model,
        judge_tokenizer,
        prompts,
        revised,
        originals,
        batch_size=batch_size,
        progress="judging" if progress else None,
    )
    rows = preference_rows(
        prompts, revised, originals, judgements.first_better, min_margin=min_margin
    )
    return rows, judgements, judged
