"""The settings the offline trainers (SFT, reward model, DPO) share, in one place: their data,
batches, schedule, clipping, cadence, LoRA and output. `OfflineLoop` reads them.

Every default is written once. The settings whose default or meaning depends on the trainer
(the model and data, the lengths, the batch size, the run's length, the learning rate and
warm-up, the evaluation and checkpoint cadence, the LoRA rank and dropout) are declared here
without a default, which keeps their place in `--help` and the saved config, and each trainer's
config gives its value and meaning once: `SFTConfig`, `RewardConfig`, `DPOConfig`. Each
trainer's own settings follow these.
"""

from dataclasses import dataclass

from rlhfkit.data.tokenize import Truncation
from rlhfkit.runtime.device import Precision
from rlhfkit.runtime.run_config import RunConfig


@dataclass(frozen=True, kw_only=True)
class OfflineConfig(RunConfig):
    model: str
    train_data: str
    eval_data: str
    max_length: int
    truncation: Truncation = Truncation.KEEP_START
    """keep_start: cut the response's end; keep_end: cut the prompt's start; drop: drop the
    row."""
    batch_size: int
    grad_accum: int = 1
    """Micro-batches per optimizer step; the step's loss divides by counts over all of them, so
    a step of grad_accum x batch_size is one update whatever its split."""
    max_steps: int
    """Optimizer steps."""
    lr: float
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at lr * min_lr_ratio (1 = constant after warm-up)."""
    warmup_steps: int
    """Linear warm-up steps."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 = none)."""
    eval_every: int
    save_every: int
    """Checkpoint every this many steps (0 = only the final model)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    shuffle: bool = True
    """Shuffle the rows each epoch (seeded); false = file order, batch k = rows
    k*B ... (k+1)*B - 1."""
    lora_r: int
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    lora_dropout: float
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    """The layers that get adapters: all-linear (every linear layer but the output head), or
    their names, e.g. [q_proj, v_proj] (peft's list: the end of each layer's dotted name)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of keeping them: less
    memory for about a third more compute (prompts shared by a group then run per row)."""
    precision: Precision = Precision.FP32
    """fp32, or bf16 (autocast forward passes, fp32 weights and optimizer state)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars."""
    progress: bool = True
    """Show a progress bar."""
