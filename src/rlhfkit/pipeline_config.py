"""The main job's config: one section per stage, each a trainer's own config."""

from dataclasses import dataclass, field
from typing import ClassVar

from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.runtime.run_config import RUN_KEYS, RunConfig
from rlhfkit.train.dpo import DPOConfig
from rlhfkit.train.grpo import GRPOConfig, Supervision
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
    shortcut_fraction: float = 0.5
    """Share of arith demonstrations that state only the answer, without the working. Half, as
    uneven writers would: the SFT model then answers some problems without working, mostly
    wrongly, and what the verifiable reward teaches (seed 003: RL elicits step-by-step
    reasoning) shows in the greedy answer on every seed, not only in the sampled ones."""


@dataclass(frozen=True)
class ModelStage:
    base_model: str = ""
    """A Hugging Face causal-LM directory to start from; empty = build the tiny default."""
    vocab_size: int = 1024
    """Tiny default: BPE vocabulary size."""
    hidden_size: int = 128
    """Tiny default: width."""
    num_layers: int = 3
    """Tiny default: transformer blocks. 3, not 4: a quarter less work in every stage, so the
    demo fits ten minutes on a 2-core AVX2-only CPU too (docs/demo.md)."""
    num_heads: int = 4
    """Tiny default: attention heads."""
    intermediate_size: int = 384
    """Tiny default: MLP width."""


@dataclass(frozen=True)
class CollectStage:
    train_prompts: int = 1600
    """Advice prompts whose sampled responses are ranked for reward-model training: 1600, which
    the reward model's 200 steps of 16 see twice (docs/demo.md)."""
    heldout_prompts: int = 200
    """Held-out prompts ranked by annotator A (the labels) and by ten more, whose agreement with A
    is averaged (reward-model accuracy and its yardsticks)."""
    responses_per_prompt: int = 8
    """K responses sampled per prompt (InstructGPT: 4-9)."""
    temperature: float = 1.0
    """Sampling temperature of the SFT model."""
    max_new_tokens: int = 64
    """Length limit of sampled responses."""
    target_agreement: float = 0.725
    """Inter-annotator agreement the simulated annotators' noise is set to (humans: 70-75%)."""


RL_KEYS = (*RUN_KEYS, "eval_max_new_tokens")
"""The pipeline's own keys that each RL stage takes from it."""


@dataclass(frozen=True)
class PipelineConfig(RunConfig):
    """`seed`, `device`, `max_nonfinite_skips` and `force_lr` (from `RunConfig`) apply to every
    stage; a stage's own copies of them, `model`, data paths, task and evaluation length are the
    pipeline's to fill (`stage_configs`), and setting one of them is an error that says what to
    set instead. With a pretrained `model.base_model`, every stage's `lr` (and PPO's
    `critic_lr`) is checked against it before the first stage (docs/pretrained-models.md).

    A section's defaults are its trainer's, except where a section below says otherwise for the
    demo: short stages for its 10-minute budget on two CPU cores, no checkpoints (the pipeline
    does not resume), and no evaluation inside the RL stages (eval_every=-1: the evaluate stage
    measures every policy alike, from one set of samples each)."""

    FILLED: ClassVar[dict[str, tuple[str, ...]]] = {
        "sft": (*RUN_KEYS, "model", "train_data", "eval_data"),
        "rm": (*RUN_KEYS, "model", "train_data", "eval_data"),
        "ppo": (*RL_KEYS, "model", "reward_model", "task", "eval_data"),
        "grpo": (*RL_KEYS, "model", "task", "eval_data"),
        "dpo": (*RUN_KEYS, "model", "train_data", "eval_data"),
        "raft": (*RL_KEYS, "model", "task", "eval_data"),
    }
    """The keys of each section the pipeline fills (`stage_configs`)."""

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
            max_steps=600, batch_size=48, lr=2e-3, eval_every=300, sample_every=600, save_every=0
        )
    )
    """SFT of the base model on the generated demonstrations. The tiny base model starts from
    random weights: more steps, a larger batch and a higher lr than the trainer's defaults
    (at 400 steps its arithmetic was learnt on some seeds and not on others)."""
    collect: CollectStage = field(default_factory=CollectStage)
    rm: RewardConfig = field(
        default_factory=lambda: RewardConfig(num_heads=4, max_steps=200, eval_every=0, save_every=0)
    )
    """The reward model on the collected rankings (evaluated once, at the end): an ensemble of 4
    heads, each on its own bootstrap resample, whose disagreement PPO subtracts from the reward.
    200 steps (two passes over the 1,600 rankings): one pass ranked the answers of gold 3.5 and
    above worse (79% like the gold annotator against 82% after two, on 2,400 rankings), and
    PPO's greedy answers stayed SFT's where the top end was not resolved (docs/demo.md)."""
    ppo: PPOConfig = field(
        default_factory=lambda: PPOConfig(
            max_steps=40,
            ppo_epochs=2,
            lr=4e-5,
            temperature=0.7,
            kl_coef=0.2,
            reward_uncertainty_coef=1.0,
            eval_every=-1,
            save_every=0,
        )
    )
    """PPO on advice against the stage's reward model: 40 steps at lr 4e-5 with beta 0.2,
    rollouts (and their log-probs) at T = 0.7, the reward minus the ensemble's spread
    (coefficient 1), the demo's setting. A single reward model learnt "more tips is better"
    past the gold annotator's six-sentence limit, and PPO's changed greedy answers followed it:
    a seventh sentence, the opener dropped for a fifth tip (43-45% of greedy comparisons on
    seed 0 at lr 1e-5 or 2e-5, with 1200 or 2400 rankings).
    The ensemble's penalty and a reward model trained for two passes over its rankings gave
    65%, 52% and 62% on seeds 0, 1 and 2 at lr 3e-5 (4 layers, 2,400 rankings), and 60%, 70%
    and 67% with the demo's 3 layers and 1,600 rankings. 40 steps, not 20: on an AMD EPYC
    with AVX-512 seed 0 won 45% of greedy comparisons after 20 steps; after 40 the three seeds'
    SFT and reward models of both kernel sets there won 60-83%. 2 passes over each rollout, not
    the trainer's 4: 57-70% of greedy and 71-76% of sampled comparisons on those six models, in
    two thirds of the time. At T = 1 and lr 3e-5 one of six such runs changed four greedy
    answers, two better and two worse (50%); rollouts at T = 0.7 moved the most likely answer
    (a tip dropped past six sentences) and, with lr 4e-5, won 67-75% of greedy comparisons
    (at least ten more answers better than worse) and 67-74% of sampled ones (docs/demo.md)."""
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            supervision=Supervision.PROCESS,
            reward="process",
            max_steps=20,
            lr=5e-5,
            temperature=0.7,
            prompts_per_step=32,
            group_size=8,
            mini_batch_size=128,
            eval_every=-1,
            save_every=0,
        )
    )
    """GRPO on arith with verified step rewards (process supervision): 32 prompts x 8 samples
    per step, sampled at T = 0.7, the demo's setting. The outcome reward alone (`supervision=
    outcome reward=task`) moved greedy accuracy less per step."""
    dpo: DPOConfig = field(
        default_factory=lambda: DPOConfig(
            loss=DPOLoss.PLACKETT_LUCE,
            beta=0.2,
            nll_weight=10.0,
            max_steps=120,
            lr=2e-4,
            precompute_ref=True,
            eval_every=0,
            save_every=0,
        )
    )
    """DPO on the collected rankings: Plackett-Luce fits each whole ranking of K responses, and
    the reference log-probs are computed once (no reference model kept). beta 0.2 for these
    steps: at the trainer's 0.5 most greedy answers stayed SFT's on some seeds (a win rate of
    45-52%); over 300 steps 0.5 is the safer choice (docs/results.md). Plain DPO moved the
    sampled answers (71-75% wins) but not the greedy one: on a seed every greedy answer it
    changed lost. The RPO term (nll_weight 10 on each ranking's top answer) pulls the greedy
    answer towards the best ranked ones; lr 2e-4 (at 3e-4 on the 3-layer model, 43% and 48% of
    greedy comparisons on two seeds; docs/demo.md). 200 steps, two passes over the
    1,600 rankings: at 100 (one pass) DPO changed 4-10 of 30 greedy answers, better and worse
    alike. At 150 steps one of six SFT models on an AMD EPYC with AVX-512 won 48% of greedy
    comparisons; at 200 the six (three seeds, two kernel sets) won 53-65%, and on the Intel
    Xeon's earlier SFT models 52-58% (150: 52-67%). 200 steps at batch 8 did not help. Once
    the advice writers opened politely in three replies of four, 120 steps (1.2 passes) won
    59-72% of greedy comparisons on six SFT models (200: 62-77%), for the ten-minute aim on the
    AVX2-only EPYC (docs/demo.md)."""
    raft: RAFTConfig = field(
        default_factory=lambda: RAFTConfig(
            max_steps=32,
            lr=1e-4,
            temperature=0.7,
            prompts_per_round=64,
            eval_every=-1,
            save_every=0,
        )
    )
    """RAFT on arith with the verifiable reward, sampled at T = 0.7: 32 rounds at lr 1e-4, the
    demo's setting (10 rounds at 5e-5 took too few steps to move the greedy answer). A round is
    one update on the kept samples, and 20 rounds left one SFT model (AVX2 kernels, seed 1) half
    a point below SFT; 40 raised all six models of two kernel sets and three seeds by 5 to 50
    points, where lr 2e-4 lost 6.5 on that one (docs/demo.md). Once the advice writers opened
    politely in three replies of four, 32 rounds raised six SFT models by 19 to 33.5 points (40:
    19.5 to 34), and the 8 rounds saved count towards the ten-minute aim."""
    advice_eval_samples: int = 2
    """Sampled answers (T = 1) per held-out advice prompt in the final evaluation, plus one
    greedy."""
    arith_eval_samples: int = 4
    """Sampled answers (T = 1) per held-out arith problem in the final evaluation: pass@k and
    maj@k for k up to this."""
    report_samples: int = 6
    """Held-out prompts shown side by side in the report, answered by SFT and by each method."""
