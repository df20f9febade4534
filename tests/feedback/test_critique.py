import json

import pytest

from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback import critique as critique_module
from rlhfkit.feedback.critique import (
    Principle,
    Revision,
    critique_and_revise,
    critique_prompt,
    load_principles,
    only_deletes,
    revision_preference_rows,
    revision_prompt,
    revision_sft_rows,
)
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout.sample import Samples

RUDE = Principle("polite", "Is any sentence rude?", "Remove the rude sentence.")
REPEAT = Principle("no_repeats", "Is a sentence said twice?", "Remove the repeat.")
PROMPTS = [
    "User: How can I sleep better at night?\nAssistant:",
    "User: How do I start running?\nAssistant:",
]
RESPONSES = [
    " Keep your bedroom dark and cool. That is a silly question.",
    " Wear shoes that fit your feet well.",
]


def test_critique_and_revision_prompts_continue_the_conversation():
    assert critique_prompt(PROMPTS[0], RESPONSES[0], RUDE) == (
        "User: How can I sleep better at night?\n"
        "Assistant: Keep your bedroom dark and cool. That is a silly question.\n"
        "Critique request: Is any sentence rude?\nCritique:"
    )
    assert revision_prompt(
        PROMPTS[0], RESPONSES[0], RUDE, ' "That is a silly question." is rude.'
    ) == (
        critique_prompt(PROMPTS[0], RESPONSES[0], RUDE) + ' "That is a silly question." is rude.\n'
        "Revision request: Remove the rude sentence.\nRevision:"
    )


def fake_sampler(monkeypatch):
    """Generation by rule: critiques run on into a next turn; the first prompt's revision is the
    response's first sentence, the second prompt's revision is empty."""

    def sample(model, tokenizer, texts, **kwargs):
        out = []
        for text in texts:
            if text.endswith("Critique:"):
                out.append(' "X" is bad.\nUser: and more')
            elif "sleep" in text:
                reply = text.split("\nAssistant: ")[1].split("\n")[0]
                out.append(" " + reply.split(". ")[0].rstrip(".") + ".")
            else:
                out.append("")
        return Samples(texts=[[t] for t in out], num_tokens=0)

    monkeypatch.setattr(critique_module, "sample_responses", sample)


def test_each_principle_revises_the_previous_revision(monkeypatch):
    fake_sampler(monkeypatch)
    chains = critique_and_revise(None, None, PROMPTS, RESPONSES, [RUDE, REPEAT])
    assert [[r.principle for r in chain] for chain in chains] == [["polite", "no_repeats"]] * 2
    first = chains[0]
    assert first[0].response == RESPONSES[0]
    assert first[0].critique == ' "X" is bad.'  # cut at the end of its line
    assert first[0].revision == " Keep your bedroom dark and cool."
    assert first[1].response == first[0].revision  # the chain goes on from the revision
    # an empty revision keeps the response
    assert [r.revision for r in chains[1]] == [RESPONSES[1]] * 2
    assert revision_sft_rows(chains) == [
        {"prompt": PROMPTS[0], "completion": " Keep your bedroom dark and cool."},
        {"prompt": PROMPTS[1], "completion": RESPONSES[1]},
    ]


def test_the_real_tiny_model_runs_the_same_path(tiny_model_dir):
    model, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    chains = critique_and_revise(model, tokenizer, PROMPTS, None, [RUDE], max_new_tokens=8, seed=3)
    assert len(chains) == 2 and all(len(chain) == 1 for chain in chains)
    for chain in chains:
        record = chain[0]
        assert (
            isinstance(record.response, str)
            and "\n" not in record.critique
            and "\n" not in record.revision
        )
        assert record.revision.startswith(" ")
    again = critique_and_revise(model, tokenizer, PROMPTS, None, [RUDE], max_new_tokens=8, seed=3)
    assert again == chains  # seeded


def test_only_changed_revisions_are_judged(tiny_model_dir):
    judge, tokenizer = load_causal_lm(tiny_model_dir), load_tokenizer(tiny_model_dir)
    chains = [
        [Revision(PROMPTS[0], RESPONSES[0], "polite", "c", " Keep your bedroom dark and cool.")],
        [Revision(PROMPTS[1], RESPONSES[1], "polite", "c", RESPONSES[1].strip())],
    ]  # unchanged but for spacing
    rows, judgements, judged = revision_preference_rows(chains, judge, tokenizer)
    assert judged == [0] and judgements.first_better.shape == (1,)
    assert len(rows) == 1 and {rows[0]["chosen"], rows[0]["rejected"]} == {
        RESPONSES[0],
        chains[0][0].revision,
    }


def test_load_principles(tmp_path):
    good = tmp_path / "principles.yaml"
    good.write_text(
        "- name: polite\n"
        "  critique_request: Is any sentence rude?\n"
        "  revision_request: Remove it.\n"
    )
    assert load_principles(good) == [Principle("polite", "Is any sentence rude?", "Remove it.")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: polite\n  critique_request: Is any sentence rude?\n")
    with pytest.raises(RlhfkitError, match="principle 1: needs non-empty strings"):
        load_principles(bad)
    with pytest.raises(RlhfkitError, match="cannot read principles"):
        load_principles(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "revision, expected",
    [
        (" Keep your bedroom dark and cool.", True),  # one sentence left out
        (" Keep your bedroom dark and cool. That is a silly question.", True),  # unchanged
        (" That is a silly question. Keep your bedroom dark and cool.", False),  # reordered
        (" Keep your bedroom dark and cool. Go to bed early.", False),  # a new sentence
    ],
)
def test_only_deletes(revision, expected):
    assert only_deletes(RESPONSES[0], revision) is expected


def test_a_conversation_gets_its_revision_as_an_assistant_message(tmp_path):
    conversation = [{"role": "user", "content": "How can I sleep better at night?"}]
    rows = revision_sft_rows(
        [[Revision(conversation, " Sleep.", "polite", " Nothing to fix.", " Sleep more.")]]
    )
    assert rows == [
        {"prompt": conversation, "completion": [{"role": "assistant", "content": " Sleep more."}]}
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    assert len(load_examples(path, Format.SFT)) == 1  # a valid conversational SFT row
