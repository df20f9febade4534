"""Bad datasets: each stops the run with one line naming the file, and the row and field where
there is one (the catalogue's promise: harness.py)."""

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

from rlhfkit.data.loading import MAX_ROW_BYTES
from tests.reliability.harness import (
    GOOD_PAIR,
    GOOD_PROMPT,
    GOOD_SFT,
    QUIET,
    Case,
    Env,
    Invocation,
    check_case,
    params,
)


def sft_on(make_path: Callable[[Env], Path | str], *expect: str):
    """A case builder: `rlhfkit sft` on the dataset `make_path(env)` makes; the line must name
    it and hold `expect`."""

    def build(env: Env) -> Invocation:
        path = make_path(env)
        argv = ["sft", f"model={env.model}", f"train_data={path}", *QUIET, *env.flags()]
        return Invocation(argv, (str(path), *expect))

    return build


def sft_rows(rows: list, *expect: str):
    """A case builder: `rlhfkit sft` on a JSON lines file holding a good row, then `rows`."""
    return sft_on(lambda env: env.jsonl("train.jsonl", [GOOD_SFT, *rows]), *expect)


def trainer_rows(command: str, rows: list, *expect: str, extra: tuple[str, ...] = ()):
    """A case builder: `rlhfkit COMMAND` (rm, dpo, grpo: each reads `train_data`) on a JSON
    lines file holding `rows`."""

    def build(env: Env) -> Invocation:
        path = env.jsonl("train.jsonl", rows)
        argv = [command, f"model={env.model}", f"train_data={path}", *extra, *QUIET, *env.flags()]
        return Invocation(argv, (str(path), *expect))

    return build


def parquet_without_completion(env: Env) -> Path:
    path = env.root / "train.parquet"
    table = pyarrow.table({"prompt": ["Q: 1 + 1?\nA:"], "answer": [" 2."]})
    pyarrow.parquet.write_table(table, path)
    return path


def one_row_past_the_limit(env: Env) -> Path:
    huge = json.dumps({"prompt": "Q:", "completion": "x" * MAX_ROW_BYTES}) + "\n"
    return env.jsonl("train.jsonl", [GOOD_SFT, huge])


def deeply_nested(env: Env) -> Path:
    row = '{"prompt": "Q:", "completion": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    return env.jsonl("train.jsonl", [GOOD_SFT, row])


def a_directory_that_is_no_dataset(env: Env) -> Path:
    folder = env.root / "data"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a dataset\n")
    return folder


def eval_data_with_a_bad_row(env: Env) -> Invocation:
    data = env.jsonl("eval.jsonl", [GOOD_SFT, {"prompt": "Q:"}])
    return Invocation(env.sft(f"eval_data={data}"), (str(data), "row 2", "field 'completion'"))


def every_eval_row_too_long(env: Env) -> Invocation:
    data = env.jsonl("eval.jsonl", [{"prompt": "Q:", "completion": " 2" * 40}])
    argv = env.sft(f"eval_data={data}", "max_length=24", "truncation=drop")
    return Invocation(argv, (str(data), "no row left", "nothing to evaluate on"))


SFT = "train.jsonl"
CASES = [
    Case(
        "malformed-json-at-row-3",
        sft_rows([GOOD_SFT, '{"prompt": "Q:", "completion": \n'], "row 3", "malformed JSON"),
    ),
    Case(
        "missing-field",
        sft_rows([{"prompt": "Q: 2 + 2?\nA:"}], "row 2", "field 'completion'", "missing"),
    ),
    Case(
        "null-field",
        sft_rows([{"prompt": "Q:", "completion": None}], "row 2", "field 'completion'", "null"),
    ),
    Case(
        "wrong-type-completion",
        sft_rows([{"prompt": "Q:", "completion": 4}], "row 2", "field 'completion'", "got int"),
    ),
    Case(
        "wrong-type-prompt",
        sft_rows([{"prompt": 7, "completion": " 4."}], "row 2", "field 'prompt'", "got int"),
    ),
    Case(
        "prompt-a-list-of-strings",
        sft_rows([{"prompt": ["Q"], "completion": " 4."}], "row 2", "field 'prompt[0]'"),
    ),
    Case(
        "empty-string",
        sft_rows([{"prompt": "   ", "completion": " 4."}], "row 2", "field 'prompt'", "empty"),
    ),
    Case(
        "row-is-not-an-object",
        sft_rows([["Q:", " 4."]], "row 2", "expected a JSON object, got array"),
    ),
    Case(
        "message-with-unknown-role",
        sft_rows(
            [
                {
                    "messages": [
                        {"role": "human", "content": "Hi"},
                        {"role": "assistant", "content": "Yo"},
                    ]
                }
            ],
            "row 2",
            "field 'messages[0].role'",
            "'human'",
        ),
    ),
    Case(
        "conversation-not-ending-with-the-assistant",
        sft_rows(
            [{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Yo"}]}],
            "row 2",
            "field 'messages[1].role'",
            "must be 'assistant'",
        ),
    ),
    Case(
        "string-prompt-with-message-completion",
        sft_rows(
            [{"prompt": "Q:", "completion": [{"role": "assistant", "content": "4"}]}],
            "row 2",
            "field 'completion'",
            "expected a string like 'prompt'",
        ),
    ),
    Case(
        "not-utf8",
        sft_on(
            lambda env: env.file(SFT, json.dumps(GOOD_SFT).encode() + b'\n{"prompt": "Q\xff"}\n'),
            "row 2",
            "not UTF-8",
        ),
    ),
    Case("binary-file", sft_on(lambda env: env.file(SFT, bytes(range(256)) * 64), "row 1")),
    Case("empty-file", sft_on(lambda env: env.file(SFT, ""), "the dataset has no rows")),
    Case(
        "blank-lines-only",
        sft_on(lambda env: env.file(SFT, "\n  \n\n"), "the dataset has no rows"),
    ),
    Case("huge-row", sft_on(one_row_past_the_limit, "row 2", "longer than the limit")),
    Case("deeply-nested-json", sft_on(deeply_nested, "row 2", "nested too deeply")),
    Case("missing-file", sft_on(lambda env: env.root / "nothing.jsonl", "no such file")),
    # no data-file ending, and not a Hub id: a path, refused at once rather than sent to the Hub
    Case("mistyped-path", sft_on(lambda env: "./data/trian", "no such file or directory")),
    Case(
        "path-too-long-for-the-file-system",
        sft_on(lambda env: env.root / ("d" * 300 + ".jsonl"), "not a usable path"),
    ),
    Case(
        "unsupported-file-type",
        sft_on(lambda env: env.file("train.csv", "prompt,completion\nQ:,4\n"), "'.csv'"),
    ),
    Case(
        "directory-that-is-no-dataset",
        sft_on(a_directory_that_is_no_dataset, "not a dataset directory saved with save_to_disk"),
    ),
    Case(
        "json-array-holding-a-non-object",
        sft_on(
            lambda env: env.file("train.json", json.dumps([GOOD_SFT, "Q: 2 + 2?"])),
            "row 2",
            "expected a JSON object, got string",
        ),
    ),
    Case(
        "parquet-with-wrong-columns",
        sft_on(parquet_without_completion, "row 1", "field 'completion'", "missing"),
    ),
    Case(
        "ranking-with-one-response",
        trainer_rows(
            "rm",
            [{"prompt": "Hi", "responses": [" A.", " B."]}, {"prompt": "Hi", "responses": [" A."]}],
            "row 2",
            "field 'responses'",
            "at least two responses",
        ),
    ),
    Case(
        "ranks-decreasing",
        trainer_rows(
            "rm",
            [{"prompt": "Hi", "responses": [" A.", " B."], "ranks": [1, 0]}],
            "row 1",
            "field 'ranks'",
        ),
    ),
    Case(
        "ranks-not-integers",
        trainer_rows(
            "rm",
            [{"prompt": "Hi", "responses": [" A.", " B."], "ranks": ["first", "second"]}],
            "row 1",
            "field 'ranks",
        ),
    ),
    Case(
        "ranks-wrong-count",
        trainer_rows(
            "rm",
            [{"prompt": "Hi", "responses": [" A.", " B.", " C."], "ranks": [0, 1]}],
            "row 1",
            "field 'ranks'",
        ),
    ),
    Case(
        "margin-not-finite",
        trainer_rows(
            "rm", [GOOD_PAIR, {**GOOD_PAIR, "margin": float("nan")}], "row 2", "field 'margin'"
        ),
    ),
    Case(
        "margin-a-string",
        trainer_rows("rm", [{**GOOD_PAIR, "margin": "big"}], "row 1", "field 'margin'", "got str"),
    ),
    Case(
        "step-labels-not-booleans",
        trainer_rows(
            "rm",
            [{"prompt": "Q:", "completions": [" 1 + 1 = 2."], "labels": ["yes"]}],
            "row 1",
            "field 'labels",
            extra=("objective=process",),
        ),
    ),
    Case(
        "dpo-chosen-wrong-type",
        trainer_rows("dpo", [GOOD_PAIR, {**GOOD_PAIR, "chosen": 3}], "row 2", "field 'chosen'"),
    ),
    Case(
        "contradictory-pairs-only",
        trainer_rows(
            "dpo", [{**GOOD_PAIR, "rejected": GOOD_PAIR["chosen"]}] * 2, "chosen equals rejected: 2"
        ),
    ),
    Case(
        "tied-rankings-only",
        trainer_rows(
            "rm",
            [{"prompt": "Hi", "responses": [" A.", " B."], "ranks": [0, 0]}] * 2,
            "all responses tied: 2",
        ),
    ),
    Case(
        "every-row-too-long",
        trainer_rows(
            "sft",
            [GOOD_SFT] * 2,
            "no row left",
            "too long: 2",
            "nothing to train on",
            extra=("max_length=3", "truncation=drop"),
        ),
    ),
    Case("every-eval-row-too-long", every_eval_row_too_long),
    Case(
        "every-step-labelled-row-too-long",
        trainer_rows(
            "rm",
            [{"prompt": "Q: 1 + 1?", "completions": [" 1 + 1 = 2."], "labels": [True]}] * 2,
            "no row left",
            "nothing to train on",
            extra=("objective=process", "max_length=3"),
        ),
    ),
    Case("bad-row-in-the-eval-data", eval_data_with_a_bad_row),
    Case(
        "prompt-row-wrong-type",
        trainer_rows(
            "grpo",
            [GOOD_PROMPT, {"prompt": 12, "answer": "5"}],
            "row 2",
            "field 'prompt'",
            extra=("task=arith",),
        ),
    ),
    # a task's verifier reads what its own prompt files carry: without it, every reward was 0
    # (no answer) or the first evaluation crashed (no steps)
    Case(
        "prompt-without-the-tasks-answer",
        trainer_rows(
            "grpo",
            [{"prompt": "Q: 2 + 3?\nA:"}],
            "row 1",
            "field 'answer'",
            "task arith checks each final answer",
            extra=("task=arith",),
        ),
    ),
    Case(
        "prompt-with-unreadable-steps",
        trainer_rows(
            "rloo",
            [{**GOOD_PROMPT, "steps": "2 + 3 = 5"}],
            "row 1",
            "field 'steps'",
            "not a list of [left, op, right, result]",
            extra=("task=arith",),
        ),
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_data(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
