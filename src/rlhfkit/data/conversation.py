"""Plain-text conversations as the AI judge and the critic quote them, and the critique-and-revise
format of Constitutional AI (Bai et al. 2022): a principle, and the critique and revision prompts
that continue the conversation with it. A task writes its critique demonstrations in this format
(`tasks.advice_critique`) and `feedback.critique` prompts a model with it.
"""

from dataclasses import dataclass

from rlhfkit.data.formats import Text

ASSISTANT_LABEL = "Assistant:"


def conversation_text(prompt: Text) -> str:
    """The conversation being answered, as plain lines.

    The project's prompts end with the assistant's label ("User: ...\\nAssistant:"); the judge
    quotes the conversation without it, since the replies follow under their own labels.
    """
    if not isinstance(prompt, str):
        prompt = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in prompt)
    text = prompt.rstrip()
    if text.endswith(ASSISTANT_LABEL):
        text = text[: -len(ASSISTANT_LABEL)].rstrip()
    return text


@dataclass(frozen=True)
class Principle:
    """One rule of the constitution."""

    name: str
    """Short name for records and reports."""
    critique_request: str
    """What the critic is asked about the response."""
    revision_request: str
    """How the reviser is asked to change it."""


def critique_prompt(prompt: Text, response: str, principle: Principle) -> str:
    return (
        f"{conversation_text(prompt)}\nAssistant: {response.strip()}\n"
        f"Critique request: {principle.critique_request}\nCritique:"
    )


def revision_prompt(prompt: Text, response: str, principle: Principle, critique: str) -> str:
    return (
        f"{critique_prompt(prompt, response, principle)} {critique.strip()}\n"
        f"Revision request: {principle.revision_request}\nRevision:"
    )
