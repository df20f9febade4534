"""The main job's config: one section per stage, each a trainer's own config."""

from dataclasses import dataclass, field

from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.ppo import PPOConfig
from rlhfkit.train.raft import RAFTConfig
from rlhfkit.train.reward import RewardConfig
from rlhfkit.train.sft import SFTConfig


@dataclass(frozen=True)
class DataStage:
    sft_rows_per_task: int = 6000
    """Demonstrations generated per built-in task (arith and advice are mixed)."""
    eval_rows_per_task: int = 100
    """Held-out demonstrations per task (eval loss, logged samples)."""
    eval_prompts_per_task: int = 200
    """Held-out prompts per task for the policy evaluation (accuracy, gold score)."""
    flawed_fraction: float = 0.2
    """Share of worked arith demonstrations with one wrong step."""
    shortcut_fraction: float = 0.0
    """Share of arith demonstrations that state only the answer, without the working."""


@dataclass(frozen=True)
class ModelStage:
    base_model: str = ""
    """A Hugging Face causal-LM directory to start from; empty = build the tiny default."""
    vocab_size: int = 1024
    """Tiny default: BPE vocabulary size."""
    hidden_size: int = 128
    """Tiny default: width."""
    num_layers: int = 4
    """Tiny default: transformer blocks."""
    num_heads: int = 4
    """Tiny default: attention heads."""
    intermediate_size: int = 384
    """Tiny default: MLP width."""


@dataclass(frozen=True)
class CollectStage:
    train_prompts: int = 1200
    """Advice prompts whose sampled responses are ranked for reward-model training."""
    heldout_prompts: int = 200
    """Held-out prompts ranked by two annotators (reward-model accuracy and its yardsticks)."""
    responses_per_prompt: int = 8
    """K responses sampled per prompt (InstructGPT: 4-9)."""
    temperature: float = 1.0
    """Sampling temperature of the SFT model."""
    max_new_tokens: int = 64
    """Length limit of sampled responses."""
    target_agreement: float = 0.725
    """Inter-annotator agreement the simulated annotators' noise is set to (humans: 70-75%)."""


@dataclass(frozen=True)
class PipelineConfig(RunConfig):
    """`seed` and `device` (from `RunConfig`) apply to every stage; a stage's own `seed`,
    `device`, `model`, data paths, task and evaluation length are the pipeline's to fill
    (`stage_configs`), and setting one of them is an error that says what to set instead.

    A section's defaults are its trainer's, except where a section below says otherwise for the
    demo: short stages for its 10-minute budget on two CPU cores, no checkpoints (the pipeline
    does not resume), and no evaluation inside the RL stages (eval_every=-1: the evaluate stage
    measures every policy alike, from one set of samples each)."""

    name: str = "demo"
    """Run name: everything goes to `<runs_dir>/<name>/`."""
    runs_dir: str = "runs"
    """Where runs are written."""
    eval_max_new_tokens: int = 64
    """Length limit of evaluation generations."""
    data: DataStage = field(default_factory=DataStage)
    model: ModelStage = field(default_factory=ModelStage)
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(
            max_steps=400, batch_size=48, lr=2e-3, eval_every=200, sample_every=400, save_every=0
        )
    )
    """SFT of the base model on the generated demonstrations. The tiny base model starts from
    random weights: more steps, a larger batch and a higher lr than the trainer's defaults."""
    collect: CollectStage = field(default_factory=CollectStage)
    rm: RewardConfig = field(default_factory=lambda: RewardConfig(eval_every=0, save_every=0))
    """The reward model on the collected rankings (evaluated once, at the end)."""
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(max_steps=10, lr=2e-5, eval_every=-1, save_every=0)
    )
    """PPO on advice against the stage's reward model: 10 steps at lr 2e-5, the demo's setting."""
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            max_steps=15,
            lr=5e-5,
            temperature=0.7,
            prompts_per_step=32,
            group_size=8,
            mini_batch_size=128,
            eval_every=-1,
            save_every=0,
        )
    )
    """GRPO on arith with the verifiable reward: 32 prompts x 8 samples per step, sampled at
    T = 0.7, the demo's setting."""
    dpo: DPOConfig = field(
        default_factory=lambda: DPOConfig(
            loss=DPOLoss.PLACKETT_LUCE,
            max_steps=100,
            precompute_ref=True,
            eval_every=0,
            save_every=0,
        )
    )
    """DPO on the collected rankings: Plackett-Luce fits each whole ranking of K responses, and
    the reference log-probs are computed once (no reference model kept)."""
    raft: RAFTConfig = field(
        default_factory=lambda: RAFTConfig(
            max_steps=10,
            lr=5e-5,
            temperature=0.7,
            prompts_per_round=64,
            eval_every=-1,
            save_every=0,
        )
    )
    """RAFT on arith with the verifiable reward, sampled at T = 0.7, the demo's setting."""
    advice_eval_samples: int = 2
    """Sampled answers (T = 1) per held-out advice prompt in the final evaluation, plus one
    greedy."""
    arith_eval_samples: int = 4
    """Sampled answers (T = 1) per held-out arith problem in the final evaluation: pass@k and
    maj@k for k up to this."""
    report_samples: int = 6
    """Held-out prompts shown side by side in the report, answered by SFT and by each method."""
