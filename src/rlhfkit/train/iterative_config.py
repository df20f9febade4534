"""The settings of iterative GRPO (`train.iterative_grpo`): the rounds, what each round labels
and how, and the GRPO and reward-model sections each round runs."""

from dataclasses import dataclass, field

from rlhfkit.feedback.labellers import LabellerKind
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.tasks.registry import TaskName
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.reward import RewardConfig


@dataclass(frozen=True)
class IterativeGRPOConfig(RunConfig):
    """`seed` (from `RunConfig`) seeds every round: round r's GRPO and reward model, its sampled
    answers, its replay and its labelled prompts each take a seed derived from (seed, r) on their
    own stream (`runtime.seeding.derive_seed`), so no round replays another run's draws."""

    model: str = ""
    """Causal-LM directory of the starting policy (usually the SFT model)."""
    reward_model: str = ""
    """The first round's reward model (a directory `rlhfkit rm` wrote)."""
    reward_data: str = ""
    """Rankings or pairs (JSONL) that reward model was trained on: replay draws from them too
    (empty = none)."""
    task: TaskName | None = None
    """Built-in task (arith, advice): the prompts of GRPO and of labelling, the simulated
    annotator, the gold score and evaluation; none (null) = your own data: `grpo.train_data`,
    `label_data` and a labeller other than the annotator."""
    label_data: str = ""
    """Prompt file each round's labelled prompts are drawn from; empty = the task's generator."""
    labeller: LabellerKind = LabellerKind.ANNOTATOR
    """Who ranks each round's samples: annotator (the task's simulated human, gold + noise),
    reward (the `label_reward` source, without noise) or judge (the AI judge at judge_model)."""
    label_reward: str = ""
    """labeller=reward: the reward source that ranks (e.g. path/to/file.py:function, model:PATH)."""
    judge_model: str = ""
    """labeller=judge: causal-LM directory of the judge (asked ' A' or ' B', see feedback.judge)."""
    rounds: int = 3
    """RL rounds; the reward model is retrained after each."""
    label_prompts: int = 200
    """Fresh prompts sampled and ranked after each round (the reward model's new training rows)."""
    heldout_prompts: int = 50
    """Further prompts ranked the same way, held out: the reward model's accuracy on the new
    policy."""
    samples_per_prompt: int = 4
    """K responses per labelled prompt: C(K,2) comparisons each."""
    label_temperature: float = 1.0
    """Sampling temperature of the responses to label."""
    replay_fraction: float = 0.1
    """Share of the reward model's training rows drawn from earlier rounds' rankings."""
    annotator_temperature: float = 0.0
    """labeller=annotator: its Bradley-Terry T; 0 = calibrated on the first round's samples, then
    fixed."""
    target_agreement: float = 0.725
    """The inter-annotator agreement that calibration aims at."""
    retrain_reward_model: bool = True
    """false: every round uses the first reward model (the control without the refresh)."""
    reset_reference: bool = True
    """false: every round keeps the starting policy as its reference (the control without the
    reset)."""
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(
            max_steps=20,
            prompts_per_step=16,
            group_size=4,
            mini_batch_size=64,
            lr=5e-5,
            eval_every=0,
            save_every=10,
        )
    )
    """Each round's GRPO run; iterative GRPO fills `model`, `reward`, `reference_model`, `task`,
    `seed`, `device`, `force_lr`, `progress` and `tensorboard` (see `grpo_round_config`)."""
    rm: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            max_steps=60, lr=5e-5, batch_size=16, warmup_steps=5, eval_every=0, save_every=30
        )
    )
    """Each round's reward-model training; iterative GRPO fills `model`, `train_data`,
    `eval_data`, `seed`, `device`, `force_lr`, `progress` and `tensorboard` (see
    `rm_round_config`)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars (one point per round)."""
    progress: bool = True
    """Show progress bars."""
