"""The settings every policy-optimisation trainer shares (the policy, its prompts, the reward,
optimisation, evaluation, checkpoints), in one place. GRPOConfig and PPOConfig add their own
algorithm's fields, and override a default where their algorithm needs another."""

from dataclasses import dataclass

from rlhfkit.runtime.device import Precision


@dataclass(frozen=True)
class PolicyRunConfig:
    model: str = ""
    """Causal-LM directory of the starting policy (usually the SFT model); also the frozen reference."""
    reference_model: str = ""
    """Another causal-LM directory as the frozen reference (e.g. the SFT model when `model` is a
    later policy); empty = `model` itself. Not with LoRA, whose reference is its own base."""
    task: str = "arith"
    """Built-in task: its prompts (unless `train_data` is given), gold score and evaluation."""
    train_data: str = ""
    """Prompt-only data (prompt, optional answer and metadata); empty = the task's generator."""
    train_prompts: int = 2000
    """Prompts drawn from the task's generator when `train_data` is empty."""
    eval_data: str = ""
    """Held-out prompts for evaluation; empty = drawn from the task's generator."""
    eval_prompts: int = 200
    """Held-out prompts drawn from the task's generator when `eval_data` is empty."""
    reward: str = "task"
    """Reward source: task, process, model:PATH, file.py:function, or a weighted sum '0.5*task + 0.5*model:PATH'."""
    reward_max_length: int = 256
    """Tokens a reward model reads per response (as in its training)."""
    reward_uncertainty_coef: float = 0.0
    """Reward = ensemble mean - coef * ensemble std (a reward-model ensemble only)."""
    reward_timeout_s: float = 60.0
    """Longest one call of a user reward function may take (0 = no limit)."""
    max_new_tokens: int = 48
    """Response length limit."""
    temperature: float = 1.0
    """Sampling temperature (the log-probs in the loss use the same)."""
    max_steps: int = 100
    """Rollout steps."""
    lr: float = 1e-4
    """Peak learning rate (AdamW), constant after warm-up."""
    warmup_steps: int = 5
    """Linear warm-up (rollout steps)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    lora_r: int = 0
    """LoRA rank (0 = full fine-tuning). With LoRA the reference is the base with adapters off."""
    lora_alpha: int = 16
    """LoRA scaling numerator."""
    eval_every: int = 25
    """Greedy evaluation on the held-out prompts every this many steps (0 = only at the start and end; -1 = never)."""
    eval_max_new_tokens: int = 48
    """Length limit at evaluation."""
    save_every: int = 25
    """Checkpoint every this many steps (0 = only the final model)."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    seed: int = 0
    """Seeds prompts, sampling and every RNG."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1, ..."""
    precision: Precision = Precision.FP32
    """fp32, or bf16 autocast for the forward passes."""
    tensorboard: bool = True
    """Also write TensorBoard scalars."""
    progress: bool = True
    """Show a progress bar."""
