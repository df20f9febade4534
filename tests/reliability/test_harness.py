"""The catalogue's check can fail: each way a command can break the promise is caught."""

import sys

import pytest

from rlhfkit import cli
from tests.reliability.harness import Case, Env, Invocation, check_case


def fake_main(action):
    """A stand-in for `cli.main` that does `action(env)` and then stops as a user error does."""

    def build(env: Env) -> Invocation:
        return Invocation(["sft"], ("bad thing",))

    def install(env: Env, monkeypatch) -> Case:
        def main():
            action(env)
            print("error: bad thing", file=sys.stderr)
            sys.exit(2)

        monkeypatch.setattr(cli, "main", main)
        return Case("fake", build)

    return install


def test_a_user_error_that_keeps_the_promise_passes(env, monkeypatch, capsys):
    check_case(fake_main(lambda env: None)(env, monkeypatch), env, monkeypatch, capsys)


@pytest.mark.parametrize(
    "action, complaint",
    [
        (lambda env: (env.runs / ".sft.replaced-1").mkdir(), "left behind"),
        (lambda env: (env.earlier / "metrics.jsonl").write_text(""), "earlier run was touched"),
        (lambda env: (env.earlier / "final" / "model.safetensors").unlink(), "earlier run"),
        (lambda env: (env.cwd / "runs").mkdir(), "new: \\['cwd/runs'\\]"),
        (lambda env: print("warning: also this", file=sys.stderr), "warning: also this"),
        (lambda env: print("error: bad thing", file=sys.stderr), "error: bad thing"),
    ],
    ids=[
        "hidden-entry-in-runs",
        "earlier-run-changed",
        "earlier-run-lost-a-file",
        "folder-in-cwd",
        "second-line",
        "second-error",
    ],
)
def test_a_broken_promise_fails_the_check(env, monkeypatch, capsys, action, complaint):
    case = fake_main(action)(env, monkeypatch)
    with pytest.raises(AssertionError, match=complaint):
        check_case(case, env, monkeypatch, capsys)


def test_a_command_that_succeeds_fails_the_check(env, monkeypatch, capsys):
    case = Case("succeeds", lambda env: Invocation(["sft", "--print-config"], ()))
    with pytest.raises(AssertionError, match="exit status 0"):
        check_case(case, env, monkeypatch, capsys)


def test_an_escaping_exception_is_a_traceback_and_status_1(env, monkeypatch, capsys):
    def main():
        raise ValueError("boom")

    monkeypatch.setattr(cli, "main", main)
    case = Case("raises", lambda env: Invocation(["sft"], ()))
    with pytest.raises(AssertionError, match="(?s)exit status 1.*Traceback.*ValueError: boom"):
        check_case(case, env, monkeypatch, capsys)


def test_a_line_without_the_expected_fragment_fails_the_check(env, monkeypatch, capsys):
    case = Case("vague", lambda env: Invocation(["sft", "lrr=1"], ("row 7",)))
    with pytest.raises(AssertionError, match="'row 7' not in: error: unknown config key"):
        check_case(case, env, monkeypatch, capsys)
