"""The demo pipeline under torchrun: its training stages run sharded on 2 gloo processes, the
others (data, model, collect, evaluate, report) on rank 0, and every number of the tables is
1 process's (up to a stage that sampled other tokens at a near-tie: see
`tests.rollout.recorded_draws`)."""

from safetensors.torch import load_file

from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config
from tests.distributed.ranks import close, max_weight_difference, on_every_rank, run_on_ranks
from tests.rollout.recorded_draws import first_apart, recording_draws
from tests.test_pipeline import STAGES, TINY

TRAINED = ("sft", "rm", "ppo", "grpo", "dpo", "raft")
# the summary sections named otherwise than their stage
SECTIONS = {"rm": "reward model", "eval": "evaluate"}


def run_pipeline_in(runs_dir: str, name: str, near_ties: bool = False) -> tuple[dict, list]:
    """The pipeline's summary, and what it sampled (`recording_draws`) tagged with the stage it
    was in: the first of `STAGES` not yet in its summary."""
    cfg = load_config(PipelineConfig, overrides=[f"runs_dir={runs_dir}", f"name={name}", *TINY])
    pipeline = Pipeline(cfg)
    with recording_draws(lambda: STAGES[len(pipeline.summary["stages"])], near_ties) as sampled:
        return pipeline.run_all(), sampled


def on_two_ranks(runs_dir: str, name: str) -> tuple[dict, list]:
    summary, sampled = run_pipeline_in(runs_dir, name)
    return summary, on_every_rank(sampled)


def numbers(tree, path=()) -> dict:
    """Every number of a nested summary by its path (wall times and the start's record, which
    names the process count, left out)."""
    if isinstance(tree, dict):
        return {
            k: v
            for key, value in tree.items()
            if key not in ("seconds", "started")
            for k, v in numbers(value, (*path, key)).items()
        }
    is_number = isinstance(tree, (int, float)) and not isinstance(tree, bool)
    return {path: tree} if is_number and tree == tree else {}  # NaN: no comparison


def test_two_ranks_equal_one_process(tmp_path):
    one, sampled_one = run_pipeline_in(str(tmp_path), "one", near_ties=True)
    two, sampled_two = run_on_ranks(2, on_two_ranks, str(tmp_path), "two")
    numbers_one, numbers_two = numbers(one), numbers(two)
    # every stage's results and every evaluation, from the same data, samples and labels
    assert numbers_one.keys() == numbers_two.keys() and ("eval", "advice", "ppo") in {
        path[:3] for path in numbers_one
    }
    # collect and the later stages sample from trained weights that differ in the last bits:
    # where a draw sat on a near-tie and the runs drew other tokens, the stages from that one on
    # are not compared (`first_apart`)
    assert {SECTIONS.get(path[0], path[0]) for path in numbers_one} <= set(STAGES)
    apart = first_apart(sampled_one, sampled_two)
    compared = STAGES[: STAGES.index(apart)] if apart is not None else STAGES
    paths = [path for path in numbers_one if SECTIONS.get(path[0], path[0]) in compared]
    differ = [path for path in paths if not close(numbers_one[path], numbers_two[path])]
    assert not differ, [(p, numbers_one[p], numbers_two[p]) for p in differ]
    files = ["data/sft.jsonl"]
    if "collect" in compared:
        files += ["collect/rankings.jsonl", "collect/heldout_rankings.jsonl"]
    for name in files:
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    for stage in (stage for stage in TRAINED if SECTIONS.get(stage, stage) in compared):
        weights = [
            load_file(tmp_path / run / stage / "final" / "model.safetensors")
            for run in ("one", "two")
        ]
        assert max_weight_difference(*weights) < 1e-5, stage
    assert (tmp_path / "two" / "report.html").stat().st_size > 10_000
