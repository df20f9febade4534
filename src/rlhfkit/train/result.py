"""What every trainer returns, so a caller reads any run alike: the final model's directory,
this run's metrics step by step, and its evaluations. Each trainer's result adds its own
fields (`SFTResult.train_losses`, `PPOResult.stopped_at_kl_limit`, ...)."""

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    """Args:
    model_dir: the final model, loadable with `from_pretrained` (`RUN_DIR/final`).
    history: one row per step (per round for RAFT) of this run, as written to metrics.jsonl,
        with its "step"; a resumed run's rows start after its checkpoint.
    evals: (step, held-out metrics) for each evaluation of this run.
    """

    model_dir: Path
    history: list[dict] = field(default_factory=list)
    evals: list[tuple[int, dict]] = field(default_factory=list)

    def record(self, step: int, row: dict) -> None:
        """Keep `row`, the metrics of `step`."""
        self.history.append({"step": step, **row})
