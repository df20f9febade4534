import pytest
import torch

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.models.reward import RewardModel, mark_objective
from rlhfkit.rewards.builder import (
    KINDS,
    build_reward_source,
    check_spec,
    parse_spec,
    source_kind,
)
from rlhfkit.rewards.combined import WeightedSum
from rlhfkit.rewards.function import FunctionReward
from rlhfkit.rewards.reward_model import RewardModelSource
from rlhfkit.rewards.task import ProcessReward, TaskReward

PROMPT = PromptExample(
    "Q: Ann has 3 pens, buys 2 more. How many pens does Ann have now?\nA:",
    answer="5",
    metadata={"task": "arith", "steps": [[3, "+", 2, 5]]},
)
RESPONSES = [" 3 + 2 = 5. The answer is 5.", " 3 + 2 = 6. The answer is 6."]
LENGTH_FILE = (
    "def length(prompts, responses, **kwargs):\n    return [float(len(r)) for r in responses]\n"
)


def build(spec, **overrides):
    args = dict(
        task_name="arith",
        tokenizer=None,
        device="cpu",
        batch_size=4,
        max_length=256,
        uncertainty_coef=0.0,
        timeout_s=5.0,
    )
    return build_reward_source(spec, **(args | overrides))


@pytest.fixture(scope="module")
def saved_reward_model(tiny_model_dir, tmp_path_factory):
    """A reward model directory as the trainer leaves it: two heads and the tokenizer."""
    out = tmp_path_factory.mktemp("reward_model")
    torch.manual_seed(0)
    RewardModel.from_pretrained(tiny_model_dir, num_heads=2).save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


def test_parse_spec_reads_terms_and_weights():
    assert parse_spec("task") == [("task", None)]
    assert parse_spec(" 0.7*model:runs/rm + 0.3 * task ") == [("model:runs/rm", 0.7), ("task", 0.3)]
    assert parse_spec("task + -0.1*r.py:f") == [("task", None), ("r.py:f", -0.1)]


def test_single_terms_build_their_sources():
    assert isinstance(build("task"), TaskReward) and build("task").name == "task"
    assert isinstance(build("process"), ProcessReward)
    scores = build("process").score([PROMPT, PROMPT], RESPONSES)
    assert scores.step_rewards == [[(10, 1.0), (27, 1.0)], [(10, 0.0), (27, 0.0)]]
    assert scores.rewards.tolist() == [1.0, 0.0]


def test_weighted_sum_of_a_function_and_the_task_matches_hand_values(tmp_path):
    path = tmp_path / "lengths.py"
    path.write_text(LENGTH_FILE)
    source = build(f"0.7*task + 0.01*{path}:length")
    assert isinstance(source, WeightedSum)
    responses = [" 3 + 2 = 5. The answer is 5.", " The answer is 7."]
    scores = source.score([PROMPT, PROMPT], responses)
    # lengths 28 and 17: 0.7*1 + 0.01*28 = 0.98 ; 0.7*0 + 0.01*17 = 0.17
    assert [len(r) for r in responses] == [28, 17]
    assert scores.rewards.tolist() == pytest.approx([0.98, 0.17])
    assert scores.components["task"].tolist() == [1.0, 0.0]
    assert scores.components[f"{path}:length"].tolist() == [28.0, 17.0]


def test_a_function_term_gets_the_timeout(tmp_path):
    path = tmp_path / "lengths.py"
    path.write_text(LENGTH_FILE)
    source = build(f"{path}:length", timeout_s=1.5)
    assert isinstance(source, FunctionReward) and source.timeout_s == 1.5


def test_model_term_loads_every_head_and_the_saved_tokenizer(saved_reward_model):
    source = build(f"model:{saved_reward_model}", uncertainty_coef=0.5)
    assert isinstance(source, RewardModelSource) and source.name == f"model:{saved_reward_model}"
    assert source.model.num_heads == 2 and source.uncertainty_coef == 0.5
    scores = source.score([PROMPT, PROMPT], RESPONSES)
    assert torch.isfinite(scores.rewards).all() and (scores.uncertainty > 0).all()


def test_a_causal_lm_directory_is_not_taken_for_a_reward_model(tiny_model_dir, tmp_path):
    with pytest.raises(
        RlhfkitError, match="is not a trained reward model .architectures: LlamaForCausalLM"
    ):
        build(f"model:{tiny_model_dir}")
    with pytest.raises(RlhfkitError, match="no config.json"):
        build(f"model:{tmp_path / 'nowhere'}")


def test_a_process_reward_model_is_refused_as_an_outcome_reward(tiny_model_dir, tmp_path):
    # it learnt a score at each step's last token; read at the EOS it gave an untrained score
    torch.manual_seed(0)
    prm = RewardModel.from_pretrained(tiny_model_dir)
    mark_objective(prm, "process")
    prm.save_pretrained(tmp_path / "prm")
    with pytest.raises(RlhfkitError) as refusal:
        build(f"0.5*model:{tmp_path / 'prm'} + task")
    message = str(refusal.value)
    assert message.startswith(f"reward source 'model:{tmp_path / 'prm'}': ")
    assert "is a process reward model" in message and "objective=pairwise" in message
    assert "\n" not in message
    # the same weights trained pairwise are an outcome reward
    mark_objective(prm, "pairwise")
    prm.save_pretrained(tmp_path / "rm")
    assert isinstance(
        build(f"model:{tmp_path / 'rm'}", tokenizer=load_tokenizer(tiny_model_dir)),
        RewardModelSource,
    )


@pytest.mark.parametrize(
    "spec, overrides, expected",
    [
        (
            "judge:gpt",
            {},
            r"unknown reward source 'judge:gpt': "
            r"expected task, process, model:PATH, path/to/file.py",
        ),
        ("rewards.py", {}, "unknown reward source 'rewards.py'"),
        ("0.5*task + ", {}, "empty term"),
        ("", {}, "empty term"),
        ("half*task", {}, "weight 'half' is not a number"),
        ("task + task", {}, "named more than once: task"),
        ("task", {"task_name": None}, "needs a built-in task"),
        ("task", {"task_name": "chess"}, "unknown task 'chess'"),
        ("process", {"task_name": "advice"}, "task 'advice' cannot check single steps"),
    ],
)
def test_bad_specs_are_errors(spec, overrides, expected):
    with pytest.raises(RlhfkitError, match=expected):
        build(spec, **overrides)


def test_check_spec_refuses_a_term_that_names_no_source_before_anything_loads(tmp_path):
    rewards = tmp_path / "my_rewards.py"
    rewards.write_text("raise SystemExit('not loaded by the check')\n")
    check_spec(f"0.5*task + 0.5*model:runs/rm/final + {rewards}:score")  # nothing loaded
    with pytest.raises(RlhfkitError, match="unknown reward source 'judge_me'"):
        check_spec("task + judge_me")
    with pytest.raises(RlhfkitError, match="'my_rewardz.py:score': no file my_rewardz.py"):
        check_spec("task + my_rewardz.py:score")


@pytest.mark.parametrize(
    "term, form",
    [
        ("task", "task"),
        ("process", "process"),
        ("model:runs/rm/final", "model:PATH"),
        ("model:dir/r.py:score", "model:PATH"),  # a model path, though it looks like a file
        ("python:__main__.score", "python:NAME"),
        ("my_rewards.py:score", "path/to/file.py:function"),
    ],
)
def test_each_term_is_taken_by_the_first_kind_that_matches_it(term, form):
    assert source_kind(term).form == form


def test_the_error_lists_every_kind_a_spec_can_name():
    forms = [kind.form for kind in KINDS if kind.form != "python:NAME"]  # given from Python
    with pytest.raises(RlhfkitError) as caught:
        source_kind("judge_me")
    assert all(form in str(caught.value) for form in forms)


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf"])
def test_a_weight_that_is_not_finite_is_refused(weight):
    with pytest.raises(RlhfkitError, match="is not a finite number"):
        parse_spec(f"{weight}*task")


def test_a_difference_of_terms_is_told_how_to_write_it():
    with pytest.raises(RlhfkitError, match=r"write 'a \+ -0.1\*b'"):
        parse_spec("task - 0.1*model:runs/rm")


def test_a_weight_in_scientific_notation_keeps_its_exponent():
    assert parse_spec("1e+2*task + 2.5E-1*model:runs/rm") == [
        ("task", 100.0),
        ("model:runs/rm", 0.25),
    ]
    assert parse_spec("task + 1e2*process") == [("task", None), ("process", 100.0)]
    with pytest.raises(RlhfkitError, match="empty term"):
        parse_spec("+task")
