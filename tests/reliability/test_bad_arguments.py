"""Bad command lines: run names, flag combinations, flags a command does not take, and commands
refused before they could change a run (the catalogue's promise: harness.py)."""

import pytest

from tests.reliability.harness import GOOD_SFT, QUIET, Case, Env, Invocation, check_case, params


def sft(*extra: str, expect: tuple[str, ...]):
    """A case builder: `rlhfkit sft` on good data with `extra` flags and overrides."""
    return lambda env: Invocation(env.sft(*extra), expect)


def plain(*argv: str, expect: tuple[str, ...] = ()):
    """A case builder: `rlhfkit ARGV` as it is."""
    return lambda env: Invocation(list(argv), expect)


def overwrite_with_bad_data(env: Env) -> Invocation:
    """--overwrite moves the earlier run aside; the new run fails on its data and the earlier
    run must be moved back as it was."""
    data = env.jsonl("train.jsonl", [GOOD_SFT, {"prompt": "Q: 2 + 2?\nA:"}])
    argv = ["sft", f"model={env.model}", f"train_data={data}", *QUIET, "--name", "earlier"]
    return Invocation([*argv, "--overwrite", *env.flags()], (str(data), "row 2", "'completion'"))


def overwrite_with_failing_reward(env: Env) -> Invocation:
    """The same, failing later: after the model is built, at the first reward."""
    rewards = env.file("rewards.py", "def score(prompts, responses, **columns):\n    return 0\n")
    argv = [
        "grpo",
        f"model={env.model}",
        f"reward={rewards}:score",
        "task=arith",
        "train_prompts=8",
        "prompts_per_step=2",
        "group_size=2",
        "mini_batch_size=4",
        "max_new_tokens=4",
        "eval_every=-1",
        "save_every=0",
        *QUIET,
    ]
    return Invocation([*argv, "--name", "earlier", "--overwrite", *env.flags()], ("returned int",))


NAME_RULE = "is not a plain run name"
CASES = [
    # --name: a plain folder name inside --runs-dir
    Case("name-with-a-slash", sft("--name", "a/b", expect=("--name 'a/b'", NAME_RULE))),
    Case("name-dot-dot", sft("--name", "..", expect=("--name '..'", NAME_RULE))),
    Case("name-hidden", sft("--name", ".earlier", expect=("--name '.earlier'", NAME_RULE))),
    Case("name-empty", sft("--name", "", expect=("--name ''", NAME_RULE))),
    Case("name-blank", sft("--name", "   ", expect=("--name '   '", NAME_RULE))),
    Case("name-absolute", sft("--name", "/tmp/run", expect=("--name '/tmp/run'", NAME_RULE))),
    # --resume and --overwrite
    Case(
        "resume-with-nothing-to-resume",
        sft("--name", "fresh", "--resume", expect=("nothing to resume", "fresh")),
    ),
    Case(
        "resume-with-changes-with-nothing-to-resume",
        sft("--name", "fresh", "--resume-with-changes", expect=("nothing to resume", "fresh")),
    ),
    Case(
        "resume-and-overwrite",
        sft("--name", "earlier", "--resume", "--overwrite", expect=("--resume or --overwrite",)),
    ),
    Case(
        "resume-with-changes-and-overwrite",
        sft(
            "--name",
            "earlier",
            "--resume-with-changes",
            "--overwrite",
            expect=("--resume or --overwrite",),
        ),
    ),
    Case(
        "resume-with-a-changed-config",
        sft(
            "lr=0.5",
            "--name",
            "earlier",
            "--resume",
            expect=("config differs", "lr: 0.001 -> 0.5", "--resume-with-changes"),
        ),
    ),
    Case(
        "existing-run-without-resume-or-overwrite",
        sft("--name", "earlier", expect=("earlier already exists", "--resume")),
    ),
    Case("overwrite-with-bad-data", overwrite_with_bad_data),
    Case("overwrite-with-a-failing-reward", overwrite_with_failing_reward),
    Case(
        "resume-on-judge",
        plain("judge", "--resume", "--runs-dir", "runs", expect=("rlhfkit judge does not resume",)),
    ),
    Case(
        "resume-on-critique",
        plain("critique", "--resume-with-changes", expect=("rlhfkit critique does not resume",)),
    ),
    Case(
        "resume-on-eval",
        plain("eval", "--resume", "--name", "earlier", expect=("rlhfkit eval does not resume",)),
    ),
    Case(
        "trainer-without-model-and-data",
        plain("rm", expect=("rlhfkit rm needs model=PATH and train_data=PATH",)),
    ),
    Case(
        "positional-that-is-no-override",
        sft("fast", expect=("override 'fast'", "key=value")),
    ),
    Case("tasks-export-without-a-task", plain("tasks", "export", expect=("needs a task name",))),
    Case("tasks-export-unknown-task", plain("tasks", "export", "chess", expect=("'chess'",))),
    # argparse's own usage errors (exit status 2, its usage block, then one error line)
    Case("unknown-flag", sft("--frobnicate", expect=("--frobnicate",)), usage=True),
    Case("unknown-command", plain("sftt", expect=("'sftt'",)), usage=True),
    Case("no-command", plain(expect=("command",)), usage=True),
    Case("flag-without-its-value", plain("sft", "--name", expect=("--name",)), usage=True),
    Case(
        "run-flag-on-the-pipeline",
        plain("pipeline", "--name", "x", expect=("--name",)),
        usage=True,
    ),
    Case(
        "tasks-rows-not-a-number",
        plain("tasks", "export", "arith", "--rows", "many", expect=("--rows", "'many'")),
        usage=True,
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_arguments(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
