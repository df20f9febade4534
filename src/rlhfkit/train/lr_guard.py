"""The learning-rate guard (`models/pretrained.py`) for jobs made of trainers: the pipeline, the
frontier, iterative GRPO and `rlhfkit judge`.

Each trainer checks its own rates against its own model before it loads anything. A job checks
every stage's before the first stage runs, against the model it starts from: the stages' own
models (the SFT model, the reward model) do not exist yet, and have that model's size. The error
names the key as the job's config spells it (`ppo.lr`), and a job's `force_lr` is passed to
every stage, so `--force-lr` skips both checks.
"""

from collections.abc import Mapping
from typing import Any

from rlhfkit.train.ppo import PPOConfig


def stage_learning_rates(stages: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """The learning rates of a job's trainer sections, keyed as its config spells them.

    Args:
        stages: section name -> the trainer config it holds, e.g. {"sft": cfg.sft}.

    Returns:
        dotted key -> (learning rate, LoRA rank of what it trains): every section's `lr`, and
        PPO's `critic_lr` (its critic is always fully fine-tuned).
    """
    rates = {}
    for name, stage in stages.items():
        rates[f"{name}.lr"] = (stage.lr, stage.lora_r)
        if isinstance(stage, PPOConfig):
            rates[f"{name}.critic_lr"] = (stage.critic_lr, 0)
    return rates
