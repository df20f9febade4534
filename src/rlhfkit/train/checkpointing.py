"""What a trainer checkpoint holds, and putting it back: model (Hugging Face format),
tokenizer, optimizer, every RNG state, the step and the data position."""

from pathlib import Path

import torch

from rlhfkit.models.loading import load_causal_lm
from rlhfkit.models.lora import add_lora, load_lora
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
        save_torch_state(
            tmp / "state.pt", {"step": step, "rng": capture_rng_state(), "extra": extra}
        )

    return save_checkpoint(checkpoints_dir, step, write=write, keep_last=keep_last)


def load_policy(
    model_dir: str, checkpoint: Path | None, *, lora_r: int, lora_alpha: int, device: torch.device
):
    """The policy to train, in train mode: the starting model or its checkpoint, or (lora_r > 0)
    LoRA adapters, fresh or from the checkpoint, on the starting model."""
    if lora_r > 0:
        base = load_causal_lm(model_dir).to(device)
        policy = (
            load_lora(base, checkpoint / MODEL_SUBDIR)
            if checkpoint
            else add_lora(base, lora_r, lora_alpha)
        )
    else:
        policy = load_causal_lm(checkpoint / MODEL_SUBDIR if checkpoint else model_dir).to(device)
    return policy.train()


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
