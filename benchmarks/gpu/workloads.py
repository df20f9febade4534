"""What the GPU benchmark runs: each workload's sizes and steps.

Standard library only: the orchestrator, rlhfkit's process and TRL's process (in TRL's own
environment) all import it, so both libraries read their sizes from this one place.
"""

from dataclasses import dataclass

# In order of importance: when the time budget runs short, the last ones are skipped.
WORKLOADS = ("grpo", "ppo", "dpo", "sft", "rm")
GENERATION = ("grpo", "ppo")


@dataclass(frozen=True)
class Sizes:
    """One run's work per step; equal for both libraries."""

    prompts: int
    """GRPO: prompts per step."""
    group: int
    """GRPO: responses sampled per prompt."""
    ppo_prompts: int
    """PPO: prompts per step, one response each."""
    new_tokens: int
    """Tokens sampled per response; every one is generated (the assets' model never samples a
    special token, so no response stops early)."""
    micro_batch: int
    """GRPO and PPO: sequences per forward/backward pass; the passes add up to one optimizer
    update per step (rlhfkit's micro_batch_size, TRL's gradient accumulation)."""
    pairs: int
    """SFT: rows per step; RM and DPO: preference pairs per step (two sequences each)."""
    seq_tokens: int
    """Tokens of every SFT, chosen and rejected sequence, prompt and EOS included (also the
    trainers' max_length, so nothing is cut)."""
    warmup: int
    """Untimed steps at the start of the generation workloads (SFT, RM, DPO: twice this)."""
    timed: int
    """Timed steps of the generation workloads (SFT, RM, DPO: 8 / 3 * this, at least 2)."""

    def steps(self, workload: str) -> tuple[int, int]:
        """(warm-up steps, timed steps) of `workload`."""
        if workload in GENERATION:
            return self.warmup, self.timed
        return 2 * self.warmup, max(2, 8 * self.timed // 3)

    def sequences(self, workload: str) -> int:
        """Sequences per step: sampled responses, or training rows."""
        return {
            "grpo": self.prompts * self.group,
            "ppo": self.ppo_prompts,
            "sft": self.pairs,
        }.get(workload, 2 * self.pairs)


FULL = Sizes(
    prompts=32,
    group=8,
    ppo_prompts=256,
    new_tokens=256,
    micro_batch=32,
    pairs=16,
    seq_tokens=512,
    warmup=1,
    timed=3,
)
SMALL = Sizes(
    prompts=4,
    group=4,
    ppo_prompts=16,
    new_tokens=16,
    micro_batch=8,
    pairs=4,
    seq_tokens=64,
    warmup=1,
    timed=2,
)
