"""The demo pipeline under torchrun: its training stages run sharded on 2 gloo processes, the
others (data, model, collect, evaluate, report) on rank 0, and every number of the tables is
1 process's."""

from safetensors.torch import load_file

from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config
from tests.distributed.ranks import close, max_weight_difference, run_on_ranks
from tests.test_pipeline import TINY

TRAINED = ("sft", "rm", "ppo", "grpo", "dpo", "raft")


def run_pipeline_in(runs_dir: str, name: str) -> dict:
    cfg = load_config(PipelineConfig, overrides=[f"runs_dir={runs_dir}", f"name={name}", *TINY])
    return Pipeline(cfg).run_all()


def numbers(tree, path=()) -> dict:
    """Every number of a nested summary by its path (wall times left out)."""
    if isinstance(tree, dict):
        return {
            k: v
            for key, value in tree.items()
            if key != "seconds"
            for k, v in numbers(value, (*path, key)).items()
        }
    is_number = isinstance(tree, (int, float)) and not isinstance(tree, bool)
    return {path: tree} if is_number and tree == tree else {}  # NaN: no comparison


def test_two_ranks_equal_one_process(tmp_path):
    one = run_pipeline_in(str(tmp_path), "one")
    two = run_on_ranks(2, run_pipeline_in, str(tmp_path), "two")
    numbers_one, numbers_two = numbers(one), numbers(two)
    # every stage's results and every evaluation, from the same data, samples and labels
    assert numbers_one.keys() == numbers_two.keys() and ("eval", "advice", "ppo") in {
        path[:3] for path in numbers_one
    }
    apart = [path for path in numbers_one if not close(numbers_one[path], numbers_two[path])]
    assert not apart, [(p, numbers_one[p], numbers_two[p]) for p in apart]
    for name in ("data/sft.jsonl", "collect/rankings.jsonl", "collect/heldout_rankings.jsonl"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    for stage in TRAINED:
        weights = [
            load_file(tmp_path / run / stage / "final" / "model.safetensors")
            for run in ("one", "two")
        ]
        assert max_weight_difference(*weights) < 1e-5, stage
    assert (tmp_path / "two" / "report.html").stat().st_size > 10_000
