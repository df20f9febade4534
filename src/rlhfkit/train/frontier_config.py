"""`rlhfkit frontier`'s config: the task's data sizes, one section per trainer (each a trainer's
own config), the DPO betas swept, and the evaluation of every checkpoint."""

from dataclasses import dataclass, field
from typing import ClassVar

from rlhfkit.runtime.run_config import RUN_KEYS, RunConfig
from rlhfkit.tasks.registry import TaskName
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.reward import RewardConfig
from rlhfkit.train.sft import SFTConfig


@dataclass(frozen=True)
class FrontierData:
    sft_rows: int = 256
    """Demonstrations the task writes for SFT."""
    sft_eval_rows: int = 32
    """Held-out demonstrations (SFT's held-out loss)."""
    eval_prompts: int = 64
    """Held-out prompts every checkpoint answers: the frontier's points and the win rates."""
    collect_prompts: int = 128
    """Prompts whose sampled responses the simulated annotators rank (reward model and DPO)."""
    heldout_rankings: int = 32
    """Held-out prompts ranked the same way: the reward model's accuracy and its yardsticks."""
    responses_per_prompt: int = 4
    """K responses sampled from the SFT model per ranked prompt."""
    temperature: float = 1.0
    """Sampling temperature of the collected responses."""
    max_new_tokens: int = 32
    """Length limit of the collected responses."""
    target_agreement: float = 0.725
    """Inter-annotator agreement the simulated annotators' noise is set to (humans: 70-75%)."""


RL_RUN_KEYS = (*RUN_KEYS, "model", "task", "eval_data", "eval_every", "save_every", "keep_last")
"""What the frontier fills in each RL run's section, besides its reward."""


@dataclass(frozen=True)
class FrontierConfig(RunConfig):
    """Every stage of the reward-KL frontier on one task (the DPO paper's figure 2): SFT,
    rankings collected from the SFT model, a reward model, PPO against it, GRPO against it and
    against the task's own (verifiable) reward, and DPO at each of `dpo_betas`; then every
    saved checkpoint of every run is evaluated alike.

    A section's defaults are its trainer's. What the frontier fills (each stage's model, data,
    task, reward, seed, device, max_nonfinite_skips, force_lr, checkpoint cadence; DPO's beta) is
    refused when set in a section, with a message saying what to set instead. Each stage's `lr`
    (and PPO's `critic_lr`) is checked against `model` before anything runs
    (docs/pretrained-models.md), unless `force_lr` (--force-lr)."""

    FILLED: ClassVar[dict[str, tuple[str, ...]]] = {
        "sft": (*RUN_KEYS, "model", "train_data", "eval_data"),
        "rm": (*RUN_KEYS, "model", "train_data", "eval_data"),
        "ppo": (*RL_RUN_KEYS, "reward_model"),
        "grpo": (*RL_RUN_KEYS, "reward"),
        "dpo": (*RUN_KEYS, "model", "train_data", "eval_data", "beta", "save_every", "keep_last"),
    }
    """The keys of each section the frontier fills (`frontier.plan_stages`)."""

    name: str = "frontier"
    """Run name: everything goes to `<runs_dir>/<name>/`."""
    runs_dir: str = "runs"
    """Where runs are written."""
    model: str = ""
    """The base model: a Hugging Face causal-LM directory or a `.gguf` file."""
    task: TaskName = TaskName.SENTIMENT
    """The built-in task: its demonstrations, prompts, simulated annotators and gold reward."""
    data: FrontierData = field(default_factory=FrontierData)
    points_per_run: int = 3
    """Checkpoints of each RL and DPO run on the frontier, evenly spaced, the last one the final
    model (each run's `save_every` is set from it)."""
    dpo_betas: tuple[float, ...] = (0.1, 0.3, 1.0)
    """One DPO run per beta (the `dpo` section's other keys shared)."""
    eval_samples: int = 4
    """Answers sampled (T = 1) per held-out prompt for every checkpoint, besides one greedy:
    gold score and KL to SFT with 95% intervals, win rates against SFT."""
    eval_max_new_tokens: int = 32
    """Length limit of evaluation answers."""
    report_samples: int = 6
    """Held-out prompts shown side by side in the report, answered by SFT and each final model."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    rm: RewardConfig = field(default_factory=RewardConfig)
    """The reward model on the SFT model's backbone, on the collected rankings."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """PPO against the reward model."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Both GRPO runs: against the reward model, and against the task's gold reward."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """DPO on the collected rankings, run once per beta of `dpo_betas`."""
