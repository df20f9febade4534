"""Bad reward sources, user reward files above all: each stops the run with one line naming the
function (and the sample it failed on), never a traceback or an exit status of the file's
choosing (the catalogue's promise: harness.py)."""

import pytest

from tests.reliability.harness import QUIET, Case, Env, Invocation, check_case, params

# A GRPO run as short as one step can be: the reward function is first called on step 1.
SHORT_GRPO = (
    "task=arith",
    "train_prompts=8",
    "eval_prompts=2",
    "prompts_per_step=2",
    "group_size=2",
    "mini_batch_size=4",
    "max_new_tokens=4",
    "eval_max_new_tokens=4",
    "max_steps=1",
    "eval_every=-1",
    "save_every=0",
)


def grpo_with(spec: str, env: Env, *expect: str, extra: tuple[str, ...] = ()) -> Invocation:
    argv = ["grpo", f"model={env.model}", f"reward={spec}", *SHORT_GRPO, *extra, *QUIET]
    return Invocation([*argv, *env.flags()], expect)


def reward_file(source: str, *expect: str, extra: tuple[str, ...] = ()):
    """A case builder: GRPO rewarded by `score` of a file holding `source`; the line must
    name the spec and hold `expect`."""

    def build(env: Env) -> Invocation:
        spec = f"{env.file('rewards.py', source)}:score"
        return grpo_with(spec, env, f"reward function '{spec}'", *expect, extra=extra)

    return build


def spec(text: str, *expect: str):
    """A case builder: GRPO rewarded by the spec `text` ("{root}" = the case folder)."""
    return lambda env: grpo_with(text.replace("{root}", str(env.root)), env, *expect)


CASES = [
    Case("reward-file-missing", spec("{root}/nothing.py:score", "nothing.py:score", "no file")),
    Case(
        "reward-spec-without-function",
        lambda env: grpo_with(str(env.file("rewards.py", "")), env, "rewards.py"),
    ),
    Case("reward-syntax-error", reward_file("def score(:\n", "SyntaxError")),
    Case("reward-import-fails", reward_file("import no_such_module_here\n", "no_such_module_here")),
    Case("reward-exits-on-import", reward_file("import sys\nsys.exit(3)\n", "SystemExit")),
    Case(
        "reward-no-such-function",
        reward_file("def other(p, r, **k):\n    return []\n", "no 'score'"),
    ),
    Case("reward-not-callable", reward_file("score = 3\n", "'score'", "not a function")),
    Case(
        "reward-raises",
        reward_file(
            "def score(prompts, responses, **columns):\n    return [1 / 0 for r in responses]\n",
            "ZeroDivisionError",
            "sample 0",
        ),
    ),
    Case(
        "reward-calls-sys-exit",
        reward_file(
            "import sys\ndef score(prompts, responses, **columns):\n    sys.exit(0)\n",
            "SystemExit(0) from sys.exit",
        ),
    ),
    Case(
        "reward-returns-a-string",
        reward_file(
            "def score(prompts, responses, **columns):\n    return 'high'\n", "returned str"
        ),
    ),
    Case(
        "reward-returns-nan",
        reward_file(
            "def score(prompts, responses, **columns):\n"
            "    return [float('nan')] * len(responses)\n",
            "returned nan",
            "finite",
        ),
    ),
    Case(
        "reward-returns-none-items",
        reward_file(
            "def score(prompts, responses, **columns):\n    return [None] * len(responses)\n",
            "returned None",
        ),
    ),
    Case(
        "reward-returns-wrong-count",
        reward_file(
            "def score(prompts, responses, **columns):\n    return [1.0]\n", "returned 1 rewards"
        ),
    ),
    Case(
        "reward-takes-no-columns",
        reward_file(
            "def score(prompts, responses):\n    return [0.0] * len(responses)\n", "answer"
        ),
    ),
    Case(
        "reward-hangs",
        reward_file(
            "import time\ndef score(prompts, responses, **columns):\n    time.sleep(5)\n",
            "did not return within 0.5 s on",
            extra=("reward_timeout_s=0.5", "reward_first_call_timeout_s=0.5"),
        ),
    ),
    Case(
        "reward-hangs-on-its-first-call",
        reward_file(
            "import time\ndef score(prompts, responses, **columns):\n    time.sleep(5)\n",
            "did not return within 1 s (the limit of a first call)",
            extra=("reward_timeout_s=0.2", "reward_first_call_timeout_s=1"),
        ),
    ),
    Case(
        "reward-calls-sys-exit-on-the-main-thread",
        reward_file(
            "import sys\ndef score(prompts, responses, **columns):\n    sys.exit(1)\n",
            "SystemExit(1) from sys.exit",
            extra=("reward_timeout_s=0",),
        ),
    ),
    Case("reward-weight-not-a-number", spec("x*task", "weight 'x' is not a number")),
    Case("reward-empty-term", spec("task + ", "empty term")),
    Case("reward-unknown-source", spec("magic", "'magic'")),
    Case("reward-model-missing", spec("model:{root}/no_rm", "no_rm")),
    Case(
        "reward-model-is-a-policy",
        lambda env: grpo_with(f"model:{env.model}", env, str(env.model), "reward model"),
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_reward(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
