"""Online DPO's settings and the checks of them, with the plan they fix: the prompts of a batch
(`batch_shares`) and of every step under the labelling budget (`run_plan`)."""

from dataclasses import dataclass
from enum import Enum

from rlhfkit.data.tokenize import Truncation
from rlhfkit.errors import ConfigError
from rlhfkit.feedback.labellers import LabellerKind
from rlhfkit.objectives.preference import DPOLoss
from rlhfkit.objectives.ranking import ranking_comparisons
from rlhfkit.runtime.config import refuse_unread_settings
from rlhfkit.train.dpo import check_loss_settings
from rlhfkit.train.online_pool import online_plan
from rlhfkit.train.policy_config import PolicyRunConfig, check_reference_model
from rlhfkit.train.policy_prompts import run_reward


class Regime(str, Enum):
    ONLINE = "online"
    """Sample and label fresh responses for every batch."""
    ITERATIVE = "iterative"
    """Sample and label the next `refresh_every` batches at once, then train on them."""
    HYBRID = "hybrid"
    """Online (or iterative) plus `offline_fraction` of every batch from `offline_data`."""


@dataclass(frozen=True)
class OnlineDPOConfig(PolicyRunConfig):
    """The shared settings (`PolicyRunConfig`) plus those of online labelling and the DPO loss."""

    regime: Regime = Regime.ONLINE
    """online (label every batch), iterative (every refresh_every batches) or hybrid (plus offline
    data)."""
    samples_per_prompt: int = 2
    """K responses sampled and ranked per prompt: 2 = pairwise DPO; more = a K-way ranking."""
    prompts_per_step: int = 16
    """Prompts (ranked groups) per optimizer step, the offline ones of a hybrid batch included."""
    refresh_every: int = 1
    """T: steps between two refreshes (iterative: at least 2; online: 1; hybrid: either)."""
    refresh_reference: bool = False
    """At each refresh the reference becomes the current policy (else the starting policy
    throughout)."""
    offline_data: str = ""
    """hybrid: preference pairs or rankings (as `rlhfkit dpo` reads) mixed into every batch."""
    offline_fraction: float = 0.5
    """hybrid: share of each batch's prompts drawn from offline_data, in (0, 1)."""
    offline_max_labels: int = 0
    """hybrid: use the leading offline rows holding at most this many comparisons (0 = all)."""
    label_budget: int = 0
    """Pairwise comparisons the labeller may make (C(K,2) per prompt); the run stops when spent.
    0 = no limit."""
    labeller: LabellerKind = LabellerKind.ANNOTATOR
    """annotator: the task's simulated human (gold + noise; needs a task); reward: the `reward`
    source, without noise; judge: the AI judge at judge_model; human: people on the labelling
    page, the run waiting for them."""
    judge_model: str = ""
    """labeller=judge: causal-LM directory of the judge (asked ' A' or ' B', see feedback.judge)."""
    human_store: str = ""
    """labeller=human: the SQLite label store people answer in; empty = labels/labels.db in the
    run directory. Its folder is kept a labels folder (`rlhfkit label export` reads it)."""
    human_timeout_s: float = 3600.0
    """labeller=human: seconds a refresh waits for all its prompts to be answered (0 = no limit);
    then the run stops, and --resume asks only for what is missing."""
    human_serve: bool = True
    """labeller=human: serve the labelling page from the run (127.0.0.1, the link printed);
    false = another process serves the store."""
    human_port: int = 8765
    """labeller=human, human_serve: the page's port; 0 = a free one."""
    human_hold_minutes: float = 10.0
    """labeller=human: how long a prompt on someone's screen stays theirs alone after they last
    opened it, before the page gives it to another labeller (`rlhfkit label serve
    --hold-minutes`); a refresh can wait this long on a labeller who left."""
    annotator_temperature: float = 0.0
    """The annotator's Bradley-Terry temperature; 0 = calibrate on the first batch to
    target_agreement."""
    target_agreement: float = 0.725
    """Inter-annotator agreement the calibrated temperature gives (human labellers: ~72.5%)."""
    loss: DPOLoss = DPOLoss.PLACKETT_LUCE
    """plackett_luce (whole rankings; K = 2 is DPO), sigmoid or ipo (a ranking as its C(K,2)
    pairs)."""
    beta: float = 0.1
    """Scale of the implicit reward beta * log(pi / pi_ref)."""
    label_smoothing: float = 0.0
    """Assumed share of flipped labels, in [0, 0.5): conservative DPO (loss=sigmoid only)."""
    micro_batch_size: int = 16
    """Groups per forward pass (0 = all of a step's groups at once); a step's gradient is
    accumulated over all its groups."""
    max_length: int = 256
    """hybrid: tokens per offline prompt + response."""
    truncation: Truncation = Truncation.KEEP_START
    """hybrid: keep_start, keep_end or drop for longer offline rows."""
    # the defaults PolicyRunConfig leaves to each trainer (see its fields; max_steps: optimizer
    # steps, unless the label budget runs out first)
    max_new_tokens: int = 48
    max_steps: int = 50
    lr: float = 1e-4
    eval_every: int = 10
    eval_max_new_tokens: int = 48
    save_every: int = 10


def batch_shares(cfg: OnlineDPOConfig) -> tuple[int, int]:
    """(online, offline) prompts of a full batch."""
    offline = (
        round(cfg.offline_fraction * cfg.prompts_per_step)
        if Regime(cfg.regime) is Regime.HYBRID
        else 0
    )
    return cfg.prompts_per_step - offline, offline


def run_plan(cfg: OnlineDPOConfig) -> list[int]:
    """Online prompts of every step; its length is the run's length."""
    return online_plan(
        max_steps=cfg.max_steps,
        online_per_step=batch_shares(cfg)[0],
        samples_per_prompt=cfg.samples_per_prompt,
        label_budget=cfg.label_budget,
    )


HYBRID_SETTINGS = ("offline_fraction", "offline_max_labels")
LABELLER_SETTINGS = {
    LabellerKind.ANNOTATOR: ("annotator_temperature", "target_agreement"),
    LabellerKind.HUMAN: (
        "human_store",
        "human_timeout_s",
        "human_serve",
        "human_port",
        "human_hold_minutes",
    ),
}
"""The keys read with one labeller alone (`refuse_unread_settings`)."""


def check_online_config(cfg: OnlineDPOConfig) -> None:
    """Reject settings that contradict the regime or leave nothing to label, saying what to
    change."""
    check_loss_settings(cfg.loss, cfg.beta, cfg.label_smoothing)
    if cfg.missing_eos_penalty:
        raise ConfigError(
            f"missing_eos_penalty={cfg.missing_eos_penalty}: online DPO learns from the "
            "labeller's rankings, not from rewards, so the penalty would change nothing: "
            "set it to 0"
        )
    regime = Regime(cfg.regime)
    if cfg.samples_per_prompt < 2:
        raise ConfigError(
            f"samples_per_prompt={cfg.samples_per_prompt}: a preference needs at least 2 responses"
        )
    # micro_batch_size=0 (all groups in one pass) is legal, as for every policy trainer
    for name in ("prompts_per_step", "refresh_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}={getattr(cfg, name)}: must be at least 1")
    if regime is Regime.ONLINE and cfg.refresh_every != 1:
        raise ConfigError(
            f"refresh_every={cfg.refresh_every} with regime=online, which labels every batch: "
            "use regime=iterative"
        )
    if regime is Regime.ITERATIVE and cfg.refresh_every < 2:
        raise ConfigError("regime=iterative needs refresh_every >= 2 (1 is regime=online)")
    if (regime is Regime.HYBRID) != bool(cfg.offline_data):
        raise ConfigError(
            "offline_data goes with regime=hybrid, and regime=hybrid needs offline_data"
        )
    online, offline = batch_shares(cfg)
    if regime is Regime.HYBRID and (online < 1 or offline < 1):
        raise ConfigError(
            f"offline_fraction={cfg.offline_fraction} of prompts_per_step={cfg.prompts_per_step} "
            f"leaves {online} online and {offline} offline prompts: both must be at least 1"
        )
    if cfg.label_budget < 0 or cfg.offline_max_labels < 0:
        raise ConfigError("label_budget and offline_max_labels must be >= 0 (0 = no limit)")
    if not run_plan(cfg):
        raise ConfigError(
            f"label_budget={cfg.label_budget} cannot pay for one ranking of "
            f"samples_per_prompt={cfg.samples_per_prompt} "
            f"({ranking_comparisons(cfg.samples_per_prompt)} comparisons)"
        )
    if LabellerKind(cfg.labeller) is LabellerKind.ANNOTATOR and not cfg.task:
        raise ConfigError(
            "labeller=annotator is a built-in task's simulated human: set "
            "task=NAME (rlhfkit tasks list), or labeller=reward (ranks by reward=) or "
            "labeller=judge"
        )
    if LabellerKind(cfg.labeller) is LabellerKind.JUDGE and not cfg.judge_model:
        raise ConfigError(
            "labeller=judge needs judge_model=PATH (a causal LM that answers ' A' or ' B')"
        )
    if cfg.judge_model and LabellerKind(cfg.labeller) is not LabellerKind.JUDGE:
        raise ConfigError(
            f"judge_model={cfg.judge_model} is read only with labeller=judge, and "
            f"labeller={LabellerKind(cfg.labeller).value} would rank every sample without it: "
            "set labeller=judge, or leave judge_model empty"
        )
    # with refresh_reference=true the reference follows the policy: none is loaded
    check_reference_model(cfg, loads_reference=not cfg.refresh_reference)
    refuse_unread_settings(cfg, "regime", {Regime.HYBRID: HYBRID_SETTINGS})
    refuse_unread_settings(cfg, "labeller", LABELLER_SETTINGS)
    if not 0.5 < cfg.target_agreement < 1.0 or cfg.annotator_temperature < 0:
        raise ConfigError(
            "target_agreement must be in (0.5, 1) and annotator_temperature >= 0 (0 = calibrate)"
        )
    run_reward(cfg, needs_reward=needs_reward(cfg))  # a mistyped reward file, before it loads


def needs_reward(cfg: OnlineDPOConfig) -> bool:
    """Whether the labeller ranks by reward (the annotator, `labeller=reward`): ranked by a judge
    or by people, a run needs none, and with one its mean is logged."""
    return LabellerKind(cfg.labeller) in (LabellerKind.ANNOTATOR, LabellerKind.REWARD)
