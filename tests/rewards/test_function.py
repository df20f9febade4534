import math
import signal
import threading

import pytest
import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.rewards.function import FunctionReward, RewardFunctionError, load_reward_function

REWARD_FILE = """
import math
import sys
import time

import torch

NOT_CALLABLE = 3


def length(prompts, responses, **kwargs):
    return [float(len(r)) for r in responses]


def columns(prompts, responses, answer, topic, task):
    # 1 for the reference answer, +0.5 on the cooking topic, +10 where the row has no topic
    return [
        float(r == a) + 0.5 * (t == "cooking") + 10 * (t is None)
        for r, a, t in zip(responses, answer, topic)
    ]


def messages(prompts, responses, **kwargs):
    return [len(p) if isinstance(p, list) else -1 for p in prompts]


def as_int(prompts, responses, **kwargs):
    return [float(int(r)) for r in responses]


def slow(prompts, responses, **kwargs):
    time.sleep(3)
    return [0.0] * len(responses)


LOADED = []


def loads_then_scores(prompts, responses, **kwargs):
    if not LOADED:
        time.sleep(0.5)  # loading a judge model, once
        LOADED.append(True)
    if "slow" in responses:
        time.sleep(0.5)
    return [1.0] * len(responses)


def nan_on_bad(prompts, responses, **kwargs):
    return [math.nan if r == "bad" else 1.0 for r in responses]


def inf_on_bad(prompts, responses, **kwargs):
    return [-math.inf if r == "bad" else 1.0 for r in responses]


def string_on_bad(prompts, responses, **kwargs):
    return ["high" if r == "bad" else 1.0 for r in responses]


def none_on_bad(prompts, responses, **kwargs):
    return [None if r == "bad" else 1.0 for r in responses]


def one_reward(prompts, responses, **kwargs):
    return [1.0]


def scalar(prompts, responses, **kwargs):
    return 1.0


def tensor(prompts, responses, **kwargs):
    return torch.tensor([float(len(r)) for r in responses])


def booleans(prompts, responses, answer, **kwargs):
    return [r == a for r, a in zip(responses, answer)]


def batch_only(prompts, responses, **kwargs):
    if len(responses) > 1:
        raise RuntimeError("cannot batch")
    return [1.0]


def exits_on_bad(prompts, responses, **kwargs):
    if "bad" in responses:
        sys.exit(int(kwargs["answer"][responses.index("bad")]))
    return [1.0] * len(responses)


def bare_exit(prompts, responses, **kwargs):
    sys.exit()


def interrupts(prompts, responses, **kwargs):
    raise KeyboardInterrupt
"""

PROMPTS = [
    PromptExample("Q: first prompt\nA:", answer="1", metadata={"topic": "cooking", "task": "t"}),
    PromptExample(
        "Q: second prompt about pens\nA:", answer="2", metadata={"topic": "garden", "task": "t"}
    ),
    PromptExample("Q: third prompt\nA:", answer="3", metadata={"task": "t"}),
]


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return path


def source(reward_file, fn_name, timeout_s=None):
    spec = f"{reward_file}:{fn_name}"
    return FunctionReward(load_reward_function(spec), name=spec, timeout_s=timeout_s)


def failure(reward_file, fn_name, responses, timeout_s=None) -> str:
    with pytest.raises(RewardFunctionError) as caught:
        source(reward_file, fn_name, timeout_s).score(PROMPTS[: len(responses)], responses)
    message = str(caught.value)
    assert isinstance(caught.value, RlhfkitError) and "\n" not in message
    assert f"reward function '{reward_file}:{fn_name}'" in message
    return message


def test_scores_come_from_the_function(reward_file):
    scores = source(reward_file, "length").score(PROMPTS[:2], ["ab", "abcd"])
    assert scores.rewards.dtype == torch.float32 and scores.rewards.tolist() == [2.0, 4.0]
    assert scores.uncertainty is None and scores.step_rewards is None


def test_answer_and_metadata_come_as_columns_with_none_for_missing(reward_file):
    scores = source(reward_file, "columns").score(PROMPTS, ["1", "x", "3"])
    assert scores.rewards.tolist() == [1.5, 0.0, 11.0]


def test_conversational_prompts_come_as_message_lists(reward_file):
    chat = PromptExample(
        [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    )
    scores = source(reward_file, "messages").score([chat, PROMPTS[0]], ["Hello", "1"])
    assert scores.rewards.tolist() == [2.0, -1.0]


def test_tensors_and_booleans_are_accepted_as_rewards(reward_file):
    assert source(reward_file, "tensor").score(PROMPTS[:2], ["a", "abc"]).rewards.tolist() == [
        1.0,
        3.0,
    ]
    assert source(reward_file, "booleans").score(PROMPTS[:2], ["1", "x"]).rewards.tolist() == [
        1.0,
        0.0,
    ]


def test_a_raise_names_the_sample_that_fails_alone(reward_file):
    message = failure(reward_file, "as_int", ["1", "two", "3"])
    assert "raised ValueError: invalid literal for int()" in message
    assert "on sample 1 ('Q: second prompt about pens A:')" in message


def test_a_raise_only_in_batches_names_the_batch(reward_file):
    message = failure(reward_file, "batch_only", ["1", "2", "3"])
    assert (
        "raised RuntimeError: cannot batch on samples 0-2 (first: 'Q: first prompt A:')" in message
    )


def test_a_call_past_the_timeout_is_an_error(reward_file):
    message = failure(reward_file, "slow", ["1", "2"], timeout_s=0.2)
    assert "did not return within 0.2 s on samples 0-1" in message


def test_the_timeout_works_off_the_main_thread(reward_file):
    reward = source(reward_file, "slow", timeout_s=0.2)
    caught = []

    def run():
        try:
            reward.score(PROMPTS[:1], ["1"])
        except Exception as error:
            caught.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=2.0)
    assert not worker.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], RewardFunctionError)
    assert "did not return within 0.2 s on sample 0" in str(caught[0])


@pytest.mark.parametrize(
    "fn_name, expected",
    [
        (
            "nan_on_bad",
            "returned nan for sample 1 ('Q: second prompt about pens A:'), "
            "expected a finite number",
        ),
        ("inf_on_bad", "returned -inf for sample 1"),
        (
            "string_on_bad",
            "returned str 'high' for sample 1 ('Q: second prompt about pens A:'), "
            "expected a number",
        ),
        (
            "none_on_bad",
            "returned None for sample 1 ('Q: second prompt about pens A:'), expected a number",
        ),
    ],
)
def test_bad_values_are_errors_naming_the_sample(reward_file, fn_name, expected):
    assert expected in failure(reward_file, fn_name, ["1", "bad", "3"])


def test_the_wrong_count_or_a_non_list_is_an_error(reward_file):
    assert "returned 1 rewards for 3 responses on samples 0-2" in failure(
        reward_file, "one_reward", ["1", "2", "3"]
    )
    assert (
        "returned float on samples 0-1 (first: 'Q: first prompt A:'), expected a list of 2 numbers"
        in failure(reward_file, "scalar", ["1", "2"])
    )


@pytest.mark.parametrize(
    "fn_name, responses, expected",
    [
        ("as_int", ["1", "two", "3"], "on sample 5 ('Q: second prompt about pens A:')"),
        ("batch_only", ["1", "2", "3"], "on samples 4-6 (first: 'Q: first prompt A:')"),
        ("string_on_bad", ["1", "bad", "3"], "for sample 5 ('Q: second prompt about pens A:')"),
        ("one_reward", ["1", "2", "3"], "for 3 responses on samples 4-6 (first: 'Q: first"),
    ],
)
def test_a_share_of_a_step_names_its_samples_by_their_index_in_the_step(
    reward_file, fn_name, responses, expected
):
    # under torchrun a rank scores the step's samples from `first` on (here 4: rank 1's, after
    # rank 0's 4), and names them as one process numbers them
    with pytest.raises(RewardFunctionError) as caught:
        source(reward_file, fn_name).score(PROMPTS, responses, first=4)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    "fn_name, kind",
    [
        ("as_int", "raised ValueError"),
        ("exits_on_bad", "raised SystemExit"),
        ("string_on_bad", "returned str for a sample, expected a number"),
        ("nan_on_bad", "returned a reward that is not a finite number"),
        ("one_reward", "returned the wrong number of rewards"),
        ("scalar", "returned float"),
    ],
)
def test_a_function_failing_alike_on_two_ranks_samples_fails_of_one_kind(
    reward_file, fn_name, kind
):
    # each rank names its own sample; the kind, which rank_errors compares, names none
    reward, errors = source(reward_file, fn_name), []
    for prompts, responses, first in (
        (PROMPTS[:2], ["bad", "2"], 0),
        (PROMPTS[1:], ["3", "bad"], 2),
    ):
        with pytest.raises(RewardFunctionError) as caught:
            reward.score(prompts, responses, first=first)
        errors.append(caught.value)
    assert str(errors[0]) != str(errors[1])
    assert errors[0].kind == errors[1].kind == f"reward function '{reward.name}' {kind}"


@pytest.mark.parametrize(
    "spec_of, expected",
    [
        (lambda f: f"{f.parent / 'missing.py'}:length", "no file"),
        (lambda f: f"{f}:absent", "defines no 'absent'"),
        (lambda f: f"{f}:NOT_CALLABLE", "'NOT_CALLABLE' in .* is a int, not a function"),
        (lambda f: str(f), "expected 'path/to/file.py:function'"),
    ],
)
def test_loading_errors_name_the_spec(reward_file, spec_of, expected):
    spec = spec_of(reward_file)
    with pytest.raises(RlhfkitError, match=expected) as caught:
        load_reward_function(spec)
    assert str(caught.value).startswith(f"reward function '{spec}': ") and "\n" not in str(
        caught.value
    )


def test_a_file_that_fails_to_load_is_an_error_naming_the_spec(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n    pass\n")
    with pytest.raises(
        RlhfkitError, match=rf"reward function '{path}:f': loading .* raised SyntaxError"
    ):
        load_reward_function(f"{path}:f")


def test_two_files_with_the_same_name_do_not_collide(tmp_path):
    first, second = tmp_path / "a" / "rewards.py", tmp_path / "b" / "rewards.py"
    for path, value in ((first, 1.0), (second, 2.0)):
        path.parent.mkdir()
        path.write_text(
            f"def r(prompts, responses, **kw):\n    return [{value}] * len(responses)\n"
        )
    values = [
        FunctionReward(load_reward_function(f"{p}:r"), "r").score(PROMPTS[:1], ["x"]).rewards.item()
        for p in (first, second)
    ]
    assert values == [1.0, 2.0]


def test_metadata_columns_that_clash_with_arguments_are_refused(reward_file):
    clash = PromptExample("Q", metadata={"responses": "oops"})
    with pytest.raises(RlhfkitError, match="^prompt metadata column 'responses' clashes") as caught:
        source(reward_file, "length").score([clash], ["x"])
    assert not isinstance(caught.value, RewardFunctionError)


def test_timeout_must_be_positive(reward_file):
    with pytest.raises(RlhfkitError, match="timeout_s must be positive"):
        source(reward_file, "length", timeout_s=0)


@pytest.mark.parametrize("timeout_s", [None, 5.0], ids=["on-the-main-thread", "with-a-deadline"])
def test_sys_exit_in_the_function_is_an_error_naming_the_sample(reward_file, timeout_s):
    # the answer column gives the exit status: sample 1's is 2, sample 0's would be 1
    message = failure(reward_file, "exits_on_bad", ["1", "bad", "3"], timeout_s)
    assert "raised SystemExit(2) from sys.exit" in message
    assert "on sample 1 ('Q: second prompt about pens A:')" in message


@pytest.mark.parametrize("timeout_s", [None, 5.0], ids=["on-the-main-thread", "with-a-deadline"])
def test_a_bare_sys_exit_is_an_error_too(reward_file, timeout_s):
    assert "raised SystemExit(None) from sys.exit" in failure(
        reward_file, "bare_exit", ["1"], timeout_s
    )


def test_a_keyboard_interrupt_the_function_raises_off_the_main_thread_is_its_error(reward_file):
    # a Ctrl-C never reaches the deadline's worker thread: this one is the function's own
    try:
        message = failure(reward_file, "interrupts", ["1", "2"], timeout_s=5.0)
    except KeyboardInterrupt:  # caught here, or it would stop the whole test session
        pytest.fail("the function's own KeyboardInterrupt passed for a Ctrl-C")
    assert "raised KeyboardInterrupt on sample 0 ('Q: first prompt A:')" in message


def test_a_keyboard_interrupt_on_the_main_thread_still_stops_the_run(reward_file):
    # without a deadline the function runs on the main thread, where its own KeyboardInterrupt
    # and the user's Ctrl-C look the same: both stop the run as a Ctrl-C does
    with pytest.raises(KeyboardInterrupt):
        source(reward_file, "interrupts").score(PROMPTS[:1], ["1"])


def test_ctrl_c_while_the_function_runs_with_a_deadline_stops_the_run(reward_file):
    # Python's own Ctrl-C handler, as in a terminal: a job a shell starts in the background
    # (`make test &`) inherits Ctrl-C ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    reward = source(reward_file, "slow", timeout_s=30.0)
    ctrl_c = threading.Timer(
        0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            reward.score(PROMPTS[:1], ["1"])
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)


def test_a_file_that_exits_while_loading_is_an_error_naming_the_spec(tmp_path):
    path = tmp_path / "exits.py"
    path.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(RlhfkitError, match=rf"'{path}:f': loading .* raised SystemExit: 3$"):
        load_reward_function(f"{path}:f")


def test_the_first_call_has_its_own_limit_for_a_function_that_loads_a_model(reward_file):
    """A judge that loads for 0.5 s on its first call passes a 0.2 s limit with a 5 s first-call
    limit; its later calls have the 0.2 s limit again, and one that needs 0.5 s fails."""
    spec = f"{reward_file}:loads_then_scores"
    reward = FunctionReward(
        load_reward_function(spec), name=spec, timeout_s=0.2, first_call_timeout_s=5.0
    )
    assert reward.limit_s == 5.0
    assert reward.score(PROMPTS[:2], ["1", "2"]).rewards.tolist() == [1.0, 1.0]
    assert reward.limit_s == 0.2
    assert reward.score(PROMPTS[:2], ["1", "2"]).rewards.tolist() == [1.0, 1.0]
    with pytest.raises(RewardFunctionError, match="did not return within 0.2 s on samples 0-1"):
        reward.score(PROMPTS[:2], ["slow", "2"])


def test_without_a_first_call_limit_the_first_call_is_timed_like_every_call(reward_file):
    spec = f"{reward_file}:loads_then_scores"
    reward = FunctionReward(load_reward_function(spec), name=spec, timeout_s=0.2)
    with pytest.raises(RewardFunctionError, match=r"within 0.2 s on sample 0"):
        reward.score(PROMPTS[:1], ["slow"])
    patient = FunctionReward(
        load_reward_function(spec), name=spec, timeout_s=0.1, first_call_timeout_s=0.2
    )
    with pytest.raises(RewardFunctionError, match=r"within 0.2 s \(the limit of a first call\)"):
        patient.score(PROMPTS[:1], ["slow"])
    unlimited = FunctionReward(
        load_reward_function(spec), name=spec, timeout_s=0.2, first_call_timeout_s=math.inf
    )
    assert unlimited.limit_s is None


def test_numpy_and_tensor_scalars_count_and_an_overflowing_int_is_one_line():
    import numpy as np

    def scalars(prompts, responses, **kwargs):
        return [np.bool_(True), torch.tensor(2.5)][: len(responses)]

    prompts = [PromptExample(prompt="a"), PromptExample(prompt="b")]
    assert FunctionReward(scalars, "s").score(prompts, ["x", "y"]).rewards.tolist() == [1.0, 2.5]
    huge = FunctionReward(lambda p, r, **k: [10**400] * len(r), "huge")
    with pytest.raises(RewardFunctionError, match="returned int .* expected a finite number"):
        huge.score(prompts, ["x", "y"])


def test_an_async_function_is_refused_saying_so(recwarn):
    async def judge(prompts, responses, **columns):
        return [1.0] * len(responses)

    prompts = [PromptExample(prompt="a")]
    with pytest.raises(RewardFunctionError, match="'judge' is async .*must be a plain function"):
        FunctionReward(judge, "judge").score(prompts, ["x"])
    assert not [w for w in recwarn if "never awaited" in str(w.message)]
