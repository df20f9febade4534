"""Row validation: good rows become examples, each bad row names its file, row and field."""

import pytest

from rlhfkit.data.detect import format_of_columns
from rlhfkit.data.formats import (
    Format,
    PreferenceExample,
    PromptExample,
    RankingExample,
    SFTExample,
    StepsExample,
    as_format,
    validate_row,
    validate_rows,
)
from rlhfkit.errors import DataError, RlhfkitError

PATH = "data/train.jsonl"
USER = {"role": "user", "content": "what is two plus three"}
ASSISTANT = {"role": "assistant", "content": "five"}


def error_for(row, fmt, row_number=7) -> DataError:
    with pytest.raises(DataError) as caught:
        validate_row(row, fmt, PATH, row_number)
    return caught.value


# ----- good rows -------------------------------------------------------------------------------


def test_sft_prompt_completion_strings():
    example = validate_row({"prompt": "2+3=", "completion": "5", "id": 1}, Format.SFT, PATH, 1)
    assert example == SFTExample(prompt="2+3=", completion="5")


def test_sft_messages_split_into_prompt_and_last_assistant_turn():
    system = {"role": "system", "content": "be brief"}
    example = validate_row({"messages": [system, USER, ASSISTANT]}, "sft", PATH, 1)
    assert example.prompt == [system, USER]
    assert example.completion == [ASSISTANT]


def test_sft_conversational_prompt_completion():
    example = validate_row({"prompt": [USER], "completion": [ASSISTANT]}, Format.SFT, PATH, 1)
    assert example == SFTExample(prompt=[USER], completion=[ASSISTANT])


def test_sft_text_is_a_language_modelling_row_with_the_empty_prompt():
    example = validate_row({"text": "two plus three is five"}, Format.SFT, PATH, 1)
    assert example == SFTExample(prompt="", completion="two plus three is five")
    assert "field 'text'" in str(error_for({"text": 5}, Format.SFT))
    assert format_of_columns({"text"}) is Format.SFT


def test_unpaired_preferences_are_refused_not_imitated():
    row = {"prompt": "2+3=", "completion": "6", "label": False}
    assert "field 'label'" in str(error_for(row, Format.SFT))
    assert "KTO" in str(error_for(row, Format.SFT))


CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}


@pytest.mark.parametrize("content", [None, ""])
def test_an_assistant_turn_that_only_calls_a_tool_is_accepted(content):
    calling = {"role": "assistant", "content": content, "tool_calls": [CALL]}
    result = {"role": "tool", "name": "add", "content": "5"}
    example = validate_row({"messages": [USER, calling, result, ASSISTANT]}, "sft", PATH, 1)
    assert example.prompt == [USER, {**calling, "content": ""}, result]
    assert example.completion == [ASSISTANT]


@pytest.mark.parametrize(
    "message, problem",
    [
        ({"role": "user", "content": "hi", "tool_calls": [CALL]}, "tool_calls'"),
        ({"role": "assistant", "content": "", "tool_calls": {"a": 1}}, "tool_calls'"),
        ({"role": "assistant", "content": "", "tool_calls": []}, "content'"),  # no call
        ({"role": "assistant", "content": None, "tool_calls": None}, "content': missing"),
    ],
)
def test_tool_calls_outside_an_assistant_turn_or_without_calls_are_refused(message, problem):
    error = error_for({"messages": [USER, message, ASSISTANT]}, "sft")
    assert f"field 'messages[1].{problem}" in str(error)


def test_example_does_not_share_message_dicts_with_the_row():
    row = {"prompt": [dict(USER)], "completion": [dict(ASSISTANT)]}
    example = validate_row(row, Format.SFT, PATH, 1)
    row["prompt"][0]["content"] = "changed"
    assert example.prompt[0]["content"] == USER["content"]


def test_preference_with_and_without_margin():
    row = {"prompt": "p", "chosen": "good", "rejected": "bad"}
    assert validate_row(row, Format.PREFERENCE, PATH, 1) == PreferenceExample("p", "good", "bad")
    with_margin = validate_row({**row, "margin": 2}, Format.PREFERENCE, PATH, 1)
    assert with_margin.margin == 2.0 and isinstance(with_margin.margin, float)


@pytest.mark.parametrize(
    "chosen, rejected, expected",
    [
        ("Q: 2 + 3? A: 5", "Q: 2 + 3? A: 6", ("Q: 2 + 3? A:", " 5", " 6")),
        ("The sum is five", "The sum is six", ("The sum is", " five", " six")),
        ("It is forty", "It is fifty", ("It is", " forty", " fifty")),  # no cut word
        ("Hi there you", "Hi there", ("Hi", " there you", " there")),  # one a prefix of the other
        ("same text", "same text", ("same", " text", " text")),  # later dropped as equal
        ("Q?\nyes", "Q?\nno", ("Q?\n", "yes", "no")),  # other whitespace stays with the prompt
        ("What is 0 + 1?\n1", "What is 0 + 1?\n2", ("What is 0 + 1?\n", "1", "2")),
        ("Sum:\n\tfive", "Sum:\n\tsix", ("Sum:\n\t", "five", "six")),  # back to the word start
        ("A:  5", "A:  6", ("A: ", " 5", " 6")),  # one space to the answers, as TRL
        ("A:4", "A:5", ("A:", "4", "5")),  # no whitespace: where they part, as TRL
    ],
)
def test_an_implicit_prompt_is_the_answers_common_start_up_to_a_word(chosen, rejected, expected):
    example = validate_row({"chosen": chosen, "rejected": rejected}, "preference", PATH, 1)
    assert example == PreferenceExample(*expected)


def test_an_implicit_prompt_in_conversations_is_their_common_leading_messages():
    other = {"role": "assistant", "content": "six"}
    row = {"chosen": [USER, ASSISTANT], "rejected": [USER, other]}
    example = validate_row(row, Format.PREFERENCE, PATH, 1)
    assert example == PreferenceExample([USER], [ASSISTANT], [other])
    same = validate_row(
        {"chosen": [USER, ASSISTANT], "rejected": [USER, ASSISTANT]}, "preference", PATH, 1
    )
    assert same == PreferenceExample([USER], [ASSISTANT], [ASSISTANT])


@pytest.mark.parametrize(
    "row, message",
    [
        ({"chosen": "abc", "rejected": "xyz"}, "share no leading text"),
        ({"chosen": " yes", "rejected": " no"}, "share no leading text"),  # only whitespace
        ({"chosen": [ASSISTANT], "rejected": [USER]}, "share no leading message"),
        (
            {"chosen": "Q: 1 A: 1", "rejected": [USER, ASSISTANT]},
            "field 'rejected': expected a string",
        ),
    ],
)
def test_an_implicit_prompt_that_cannot_be_found_is_one_line(row, message):
    assert message in str(error_for(row, Format.PREFERENCE))


def test_ranking_default_ranks_and_ties():
    row = {"prompt": "p", "responses": ["a", "b", "c", "d"]}
    assert validate_row(row, Format.RANKING, PATH, 1) == RankingExample(
        "p", ("a", "b", "c", "d"), (0, 1, 2, 3)
    )
    tied = validate_row({**row, "ranks": [0, 1, 1, 2]}, Format.RANKING, PATH, 1)
    assert tied.ranks == (0, 1, 1, 2)


def test_a_ranking_with_a_margin_is_refused():
    # a pair's column that a ranking would read nowhere
    row = {"prompt": "p", "responses": ["a", "b"], "margin": 2.0}
    assert "row 7: field 'margin': a ranking has no margin" in str(error_for(row, Format.RANKING))


def test_prompt_keeps_other_columns_as_metadata():
    row = {"prompt": "2+3=", "answer": "5", "source": "gsm8k", "level": 2}
    example = validate_row(row, Format.PROMPT, PATH, 1)
    assert example == PromptExample("2+3=", "5", {"source": "gsm8k", "level": 2})
    assert validate_row({"prompt": "hi"}, Format.PROMPT, PATH, 1).answer is None


@pytest.mark.parametrize("labels", [[1, False], [1.0, 0.0], [True, 0]])
def test_steps_accepts_booleans_and_zero_one(labels):
    row = {"prompt": "p", "completions": ["step one", "step two"], "labels": labels}
    assert validate_row(row, Format.STEPS, PATH, 1) == StepsExample(
        "p", ("step one", "step two"), (True, False)
    )


def test_validate_rows_keeps_order():
    rows = [(1, {"prompt": "a", "completion": "b"}), (3, {"prompt": "c", "completion": "d"})]
    examples = validate_rows(rows, Format.SFT, PATH)
    assert [e.prompt for e in examples] == ["a", "c"]


def test_validate_rows_names_the_bad_rows_number():
    rows = [(1, {"prompt": "a", "completion": "b"}), (4, {"prompt": "c"})]
    with pytest.raises(DataError, match="row 4: field 'completion'"):
        validate_rows(rows, Format.SFT, PATH)


def test_unknown_format_lists_known_ones():
    with pytest.raises(RlhfkitError, match="unknown dataset format 'pairs'.*preference"):
        as_format("pairs")


# ----- bad rows: (row, format, field, words the message must contain) ----------------------------

BAD_ROWS = {
    "missing field": (
        {"prompt": "p", "rejected": "r"},
        Format.PREFERENCE,
        "chosen",
        "missing (the row has columns: 'prompt', 'rejected')",
    ),
    "null field": ({"prompt": None, "completion": "c"}, Format.SFT, "prompt", "missing"),
    "sft without prompt, messages or text": (
        {"body": "t"},
        Format.SFT,
        "prompt",
        "needs 'prompt' and 'completion', 'messages', or 'text'",
    ),
    "wrong type": (
        {"prompt": "p", "chosen": 3, "rejected": "r"},
        Format.PREFERENCE,
        "chosen",
        "expected a non-empty string or a list of messages, got int",
    ),
    "empty text": (
        {"prompt": "", "completion": "c"},
        Format.SFT,
        "prompt",
        "got an empty string",
    ),
    "whitespace text": (
        {"prompt": "p", "completion": " \n\t"},
        Format.SFT,
        "completion",
        "got only whitespace (' \\n\\t')",
    ),
    "chosen alone": (
        {"chosen": "Q: 2 + 3?\nA: 5."},
        Format.PREFERENCE,
        "rejected",
        "missing (the row has columns: 'chosen')",
    ),
    "empty message list": ({"prompt": [], "completion": "c"}, Format.SFT, "prompt", "empty list"),
    # JSON's "\\ud800" (half a surrogate pair) decodes to a str no tokenizer can encode
    "lone surrogate": (
        {"prompt": "p", "chosen": "ok \ud83d", "rejected": "r"},
        Format.PREFERENCE,
        "chosen",
        "not valid Unicode: a lone surrogate '\\ud83d' at character 4",
    ),
    "lone surrogate in a message": (
        {"messages": [{"role": "user", "content": "\udc00 hi"}, ASSISTANT]},
        Format.SFT,
        "messages[0].content",
        "lone surrogate '\\udc00' at character 1",
    ),
    "lone surrogate in a step": (
        {"prompt": "p", "completions": ["a", "b\ud800"], "labels": [True, False]},
        Format.STEPS,
        "completions[1]",
        "not valid Unicode",
    ),
    "message not a dict": (
        {"messages": [USER, "five"]},
        Format.SFT,
        "messages[1]",
        "expected a message with 'role' and 'content', got str",
    ),
    "message without role": (
        {"messages": [USER, {"content": "five"}]},
        Format.SFT,
        "messages[1].role",
        "missing",
    ),
    "unknown role": (
        {"messages": [{"role": "bot", "content": "x"}, ASSISTANT]},
        Format.SFT,
        "messages[0].role",
        "expected one of 'system', 'user', 'assistant', 'tool', got 'bot'",
    ),
    "empty message content": (
        {"messages": [USER, USER, {"role": "assistant", "content": ""}]},
        Format.SFT,
        "messages[2].content",
        "expected a non-empty string, got an empty string",
    ),
    "message content wrong type": (
        {"prompt": [{"role": "user", "content": 5}], "completion": [ASSISTANT]},
        Format.SFT,
        "prompt[0].content",
        "got int",
    ),
    "messages not ending with assistant": (
        {"messages": [ASSISTANT, USER]},
        Format.SFT,
        "messages[1].role",
        "the last message must be 'assistant', got 'user'",
    ),
    "single message": ({"messages": [ASSISTANT]}, Format.SFT, "messages", "at least two"),
    "string prompt with message completion": (
        {"prompt": "p", "completion": [ASSISTANT]},
        Format.SFT,
        "completion",
        "expected a string like 'prompt', got list",
    ),
    "margin is a bool": (
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": True},
        Format.PREFERENCE,
        "margin",
        "expected a number, got bool",
    ),
    "margin not finite": (
        {"prompt": "p", "chosen": "c", "rejected": "r", "margin": float("nan")},
        Format.PREFERENCE,
        "margin",
        "expected a finite number, got nan",
    ),
    "ranking with one response": (
        {"prompt": "p", "responses": ["only"]},
        Format.RANKING,
        "responses",
        "a ranking needs at least two responses, got 1",
    ),
    "responses not a list": (
        {"prompt": "p", "responses": "a"},
        Format.RANKING,
        "responses",
        "expected a list of responses, got str",
    ),
    "empty response": (
        {"prompt": "p", "responses": ["a", "  "]},
        Format.RANKING,
        "responses[1]",
        "empty string",
    ),
    "ranks length mismatch": (
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1]},
        Format.RANKING,
        "ranks",
        "expected one rank per response (3), got 2",
    ),
    "ranks decreasing": (
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 2, 1]},
        Format.RANKING,
        "ranks",
        "non-decreasing",
    ),
    "rank is a bool": (
        {"prompt": "p", "responses": ["a", "b"], "ranks": [False, True]},
        Format.RANKING,
        "ranks[0]",
        "expected an integer, got bool",
    ),
    "answer a number": (
        {"prompt": "p", "answer": 5},
        Format.PROMPT,
        "answer",
        'expected text, got a number: write it as "5"',
    ),
    "answer wrong type": (
        {"prompt": "p", "answer": ["5"]},
        Format.PROMPT,
        "answer",
        "expected a non-empty string, got list",
    ),
    "labels length mismatch": (
        {"prompt": "p", "completions": ["s1", "s2"], "labels": [True]},
        Format.STEPS,
        "labels",
        "expected one label per step (2), got 1",
    ),
    "label not boolean": (
        {"prompt": "p", "completions": ["s1", "s2"], "labels": [True, 2]},
        Format.STEPS,
        "labels[1]",
        "expected a boolean or 0/1, got 2",
    ),
    "label a fraction": (
        {"prompt": "p", "completions": ["s1", "s2"], "labels": [True, 0.5]},
        Format.STEPS,
        "labels[1]",
        "expected a boolean or 0/1, got 0.5",
    ),
    "no steps": (
        {"prompt": "p", "completions": [], "labels": []},
        Format.STEPS,
        "completions",
        "at least one step",
    ),
    "empty step": (
        {"prompt": "p", "completions": ["s1", ""], "labels": [1, 0]},
        Format.STEPS,
        "completions[1]",
        "empty string",
    ),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_bad_row_message_names_file_row_and_field(case):
    row, fmt, field_name, words = BAD_ROWS[case]
    error = error_for(row, fmt, row_number=7)
    message = str(error)
    assert message.startswith(f"{PATH}: row 7: field '{field_name}': ")
    assert words in message
    assert "\n" not in message
    assert (error.path, error.row, error.field) == (PATH, 7, field_name)


def test_row_that_is_not_an_object():
    error = error_for(["p", "c"], Format.SFT, row_number=2)
    assert str(error) == f"{PATH}: row 2: expected an object with named columns, got list"
