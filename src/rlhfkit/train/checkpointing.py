"""What a trainer checkpoint holds, and putting it back: model (Hugging Face format),
tokenizer, optimizer, every RNG state, the step and the data position."""

from pathlib import Path

import torch

from rlhfkit.runtime.checkpoint import (
    capture_rng_state,
    latest_checkpoint,
    load_torch_state,
    restore_rng_state,
    save_checkpoint,
    save_torch_state,
)

MODEL_SUBDIR = "model"


def save_trainer_checkpoint(
    checkpoints_dir: Path,
    *,
    step: int,
    model,
    tokenizer,
    optimizer: torch.optim.Optimizer,
    extra: dict,
    keep_last: int,
) -> Path:
    """Atomically write checkpoint `step` (see runtime.checkpoint.save_checkpoint)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / MODEL_SUBDIR)
        tokenizer.save_pretrained(tmp / MODEL_SUBDIR)
        save_torch_state(tmp / "optimizer.pt", optimizer.state_dict())
        save_torch_state(tmp / "state.pt", {"step": step, "rng": capture_rng_state(), "extra": extra})

    return save_checkpoint(checkpoints_dir, step, write=write, keep_last=keep_last)


def resume_point(checkpoints_dir: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh start."""
    return latest_checkpoint(checkpoints_dir)


def restore_trainer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Load the optimizer and RNG states; return (step, extra). The model itself is loaded
    from `checkpoint / MODEL_SUBDIR` by the trainer, like any model directory."""
    optimizer.load_state_dict(load_torch_state(checkpoint / "optimizer.pt"))
    state = load_torch_state(checkpoint / "state.pt")
    restore_rng_state(state["rng"])
    return state["step"], state["extra"]
