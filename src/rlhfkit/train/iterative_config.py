"""The settings of iterative GRPO (`train.iterative_grpo`): the rounds, what each round labels
and how, and the GRPO and reward-model sections each round runs; the checks made before the first
round, and the keys each round fills in those sections."""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rlhfkit.data.formats import PromptExample
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.feedback.labellers import LabellerKind
from rlhfkit.models.loading import read_model_config
from rlhfkit.models.reward import is_reward_model
from rlhfkit.runtime.config import Filled, fill_section, passed_on, refuse_unread_settings
from rlhfkit.runtime.run_config import RUN_KEYS, RunConfig
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.registry import TaskName
from rlhfkit.train.grpo import GRPOConfig
from rlhfkit.train.reward import RewardConfig

log = logging.getLogger(__name__)

ROUND_KEYS = (*RUN_KEYS, "progress", "tensorboard")
"""The job's own keys that each round's GRPO and reward model take from it."""


@dataclass(frozen=True)
class IterativeGRPOConfig(RunConfig):
    """`seed` (from `RunConfig`) seeds every round: round r's GRPO and reward model, its sampled
    answers, its replay and its labelled prompts each take a seed derived from (seed, r) on their
    own stream (`runtime.seeding.derive_seed`), so no round replays another run's draws."""

    FILLED: ClassVar[dict[str, tuple[str, ...]]] = {
        "grpo": (*ROUND_KEYS, "model", "reward", "reference_model", "task"),
        "rm": (*ROUND_KEYS, "model", "eval_data", "train_data"),
    }
    """The keys of each section every round fills (`grpo_round_config`, `rm_round_config`)."""

    model: str = ""
    """Causal-LM directory of the starting policy (usually the SFT model)."""
    reward_model: str = ""
    """The first round's reward model (a directory `rlhfkit rm` wrote)."""
    reward_data: str = ""
    """Rankings or pairs (JSONL) that reward model was trained on: replay draws from them too
    (empty = none)."""
    task: TaskName | None = None
    """A built-in task (`rlhfkit tasks` lists them): the prompts of GRPO and of labelling, the
    simulated annotator, the gold score and evaluation; none (null) = your own data:
    `grpo.train_data`, `label_data` and a labeller other than the annotator."""
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
    `seed`, `device`, `max_nonfinite_skips`, `force_lr`, `progress` and `tensorboard` (see
    `grpo_round_config`)."""
    rm: RewardConfig = field(
        default_factory=lambda: RewardConfig(
            max_steps=60, lr=5e-5, batch_size=16, warmup_steps=5, eval_every=0, save_every=30
        )
    )
    """Each round's reward-model training; iterative GRPO fills `model`, `train_data`,
    `eval_data`, `seed`, `device`, `max_nonfinite_skips`, `force_lr`, `progress` and
    `tensorboard` (see `rm_round_config`)."""
    tensorboard: bool = True
    """Also write TensorBoard scalars (one point per round)."""
    progress: bool = True
    """Show progress bars."""


ANNOTATOR_SETTINGS = ("annotator_temperature", "target_agreement")
"""Read with labeller=annotator alone."""


def check_config(cfg: IterativeGRPOConfig) -> None:
    if not cfg.model or not cfg.reward_model:
        raise ConfigError(
            "rlhfkit iterative-grpo needs model=PATH (the policy) and reward_model=PATH"
        )
    if not cfg.task and not (cfg.label_data and cfg.grpo.train_data):
        raise ConfigError(
            "without a task, iterative-grpo needs grpo.train_data=PATH (GRPO's "
            "prompts) and label_data=PATH (the prompts labelled each round); or set "
            "task=NAME (rlhfkit tasks list)"
        )
    kind = LabellerKind(cfg.labeller)
    if kind is LabellerKind.ANNOTATOR and not cfg.task:
        raise ConfigError(
            "labeller=annotator is a built-in task's simulated human: set "
            "task=NAME (rlhfkit tasks list), or labeller=reward with "
            "label_reward=file.py:function, or labeller=judge"
        )
    if kind is LabellerKind.REWARD and not cfg.label_reward:
        raise ConfigError("labeller=reward needs label_reward=SPEC (e.g. path/to/file.py:function)")
    if kind is LabellerKind.JUDGE and not cfg.judge_model:
        raise ConfigError(
            "labeller=judge needs judge_model=PATH (a causal LM that answers ' A' or ' B')"
        )
    for key, reads in (("judge_model", LabellerKind.JUDGE), ("label_reward", LabellerKind.REWARD)):
        if getattr(cfg, key) and kind is not reads:
            raise ConfigError(
                f"{key}={getattr(cfg, key)} is read only with labeller={reads.value}, and "
                f"labeller={kind.value} would rank every sample without it: set "
                f"labeller={reads.value}, or leave {key} empty"
            )
    refuse_unread_settings(cfg, "labeller", {LabellerKind.ANNOTATOR: ANNOTATOR_SETTINGS})
    check_round_keys(cfg)  # a user's own value for a key each round fills is refused
    if cfg.rounds < 1 or cfg.samples_per_prompt < 2 or cfg.label_prompts < 1:
        raise ConfigError(
            f"rounds={cfg.rounds}, samples_per_prompt={cfg.samples_per_prompt}, label_prompts="
            f"{cfg.label_prompts}: need at least 1 round, 2 samples and 1 prompt to rank"
        )
    if not 0.0 <= cfg.replay_fraction < 1.0:
        raise ConfigError(f"replay_fraction={cfg.replay_fraction}: must be in [0, 1)")
    # a LoRA round's reference is its own base: from round 2 on the last round's policy, so
    # keeping the first policy as every round's reference cannot be expressed
    if cfg.grpo.lora_r > 0 and not cfg.reset_reference:
        raise ConfigError(
            f"reset_reference=false with grpo.lora_r={cfg.grpo.lora_r}: under LoRA each "
            "round's reference is that round's starting policy with its adapters off; set "
            "reset_reference=true or grpo.lora_r=0"
        )


def check_reward_model(cfg: IterativeGRPOConfig) -> None:
    """The first reward model against the `rm` settings, before the first round: it is read
    when round 1 refreshes the model, after its GRPO and labelling."""
    config = read_model_config(cfg.reward_model)
    if is_reward_model(config) and config.num_labels != cfg.rm.num_heads:
        raise ConfigError(
            f"reward_model={cfg.reward_model} has {config.num_labels} reward heads and "
            f"rm.num_heads={cfg.rm.num_heads}: set rm.num_heads={config.num_labels}"
        )
    if cfg.rm.imitation_coef > 0 and not getattr(config, "tie_word_embeddings", False):
        raise ConfigError(
            f"rm.imitation_coef={cfg.rm.imitation_coef} with reward_model={cfg.reward_model}, "
            "whose embeddings are untied: each round retrains the last round's reward model, "
            "which keeps no LM head for the imitation term; set rm.imitation_coef=0"
        )


def _common_fills(cfg: IterativeGRPOConfig, r: int) -> dict[str, Filled]:
    return {
        "seed": Filled(
            derive_seed(cfg.seed, SeedStream.ROUND_TRAINERS, r),
            "from seed= (round r: its own derived seed)",
            "set seed= instead",
        ),
        **passed_on(cfg, [key for key in ROUND_KEYS if key != "seed"]),
    }


def check_round_keys(cfg: IterativeGRPOConfig, given: frozenset[str] = frozenset()) -> None:
    """Round 1's GRPO and reward-model settings as a run makes them (a key each round fills is
    refused), for `--print-config`: what it prints, the run takes."""
    grpo_round_config(cfg, 1, cfg.model, cfg.reward_model, given)
    rm_round_config(cfg, 1, cfg.reward_model, Path("."), given)


def grpo_round_config(
    cfg: IterativeGRPOConfig, r: int, policy: str, rm: str, given: frozenset[str] = frozenset()
) -> GRPOConfig:
    """Round r's GRPO settings: `cfg.grpo` with the keys each round fills (one the user set,
    `given`, refused)."""
    # beta = 0: GRPO loads no reference, and refuses one it would not use
    reference = "" if cfg.reset_reference or cfg.grpo.beta == 0 else cfg.model
    fills = {
        "model": Filled(
            policy, "each round (the last round's policy)", "set model= for the first round"
        ),
        "reward": Filled(
            f"model:{rm}",
            "each round (the current reward model)",
            "set reward_model= for the first round",
        ),
        "reference_model": Filled(
            reference, "from reset_reference=", "set reset_reference= instead"
        ),
        "task": Filled(cfg.task, "from task=", "set task= instead"),
        **_common_fills(cfg, r),
    }
    return fill_section(cfg, "grpo", fills, by="iterative GRPO", given=given)


def rm_round_config(
    cfg: IterativeGRPOConfig, r: int, rm: str, folder: Path, given: frozenset[str] = frozenset()
) -> RewardConfig:
    """Round r's reward-model settings: `cfg.rm` with the keys each round fills (`train_data`:
    written once the round's rows are, see `_reward_round`)."""
    fills = {
        "model": Filled(
            rm, "each round (the current reward model)", "set reward_model= for the first round"
        ),
        "eval_data": Filled(
            str(folder / "heldout_rankings.jsonl"),
            "each round (its held-out rankings)",
            "set heldout_prompts= instead",
        ),
        "train_data": Filled(
            "", "each round (its rankings plus replay)", "set reward_data= instead"
        ),
        **_common_fills(cfg, r),
    }
    return fill_section(cfg, "rm", fills, by="iterative GRPO", given=given)


def check_label_prompts(
    cfg: IterativeGRPOConfig, prompts: list[PromptExample], held_out: set[str]
) -> None:
    """Refuse `label_data` when every one of its prompts is an evaluation prompt, which no round
    labels: round 1 would find nothing to rank after its GRPO."""
    fresh = sum(str(p.prompt) not in held_out for p in prompts)
    if not fresh:
        raise RlhfkitError(
            f"label_data={cfg.label_data}: all {len(prompts)} of its prompts are evaluation "
            f"prompts (grpo.eval_data={cfg.grpo.eval_data}), which no round labels: give "
            "label_data prompts apart from grpo.eval_data"
        )
    wanted = cfg.label_prompts + cfg.heldout_prompts
    if fresh < wanted:
        heldout = max(0, fresh - cfg.label_prompts)
        log.warning(
            f"label_data={cfg.label_data}: {fresh} prompts to label, fewer than label_prompts + "
            f"heldout_prompts = {cfg.label_prompts} + {cfg.heldout_prompts}: each round ranks "
            f"all {fresh}, {fresh - heldout} to train the reward model and {heldout} held out"
            + (" (its accuracy on the new policy is then not measured)" if not heldout else "")
        )
