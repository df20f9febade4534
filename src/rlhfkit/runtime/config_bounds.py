"""The legal values of every numeric config setting, declared in one table, and `validate`.

An annotation says that `max_steps` is an int and `lr` a float; it cannot say that `max_steps=0`
saves the untrained model or that `lr=nan` ruins every weight. `BOUNDS` gives each numeric
setting of rlhfkit's configs the interval it must lie in; a value a docstring gives a meaning to
(`eval_every=-1`: never, `lora_r=0`: full fine-tuning) lies inside it. Rules go by field name, so
a setting means the same in every config; where one config gives the name another meaning, an
entry `"Class.field"` (the class that declares it, or a base of it) takes precedence.

Every float, bounded or not, must also be finite. `load_config` calls `validate` on every config
it builds; code that builds a config in Python can call it too.
"""

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class Bound:
    """The interval a numeric setting must lie in (both ends included unless said open)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    note: str = ""
    """What a special value inside the interval means, for the error ("0 = no limit")."""

    def holds(self, value: float) -> bool:
        above_low = value > self.low if self.low_open else value >= self.low
        below_high = value < self.high if self.high_open else value <= self.high
        return above_low and below_high

    def describe(self) -> str:
        """The rule in words: ">= 1", "> 0", "in (0, 1]", "a finite number"."""
        if self.low == -math.inf and self.high == math.inf:
            text = "a finite number"
        elif self.high == math.inf:
            text = f"{'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.low == -math.inf:
            text = f"{'<' if self.high_open else '<='} {_number(self.high)}"
        else:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        return f"{text} ({self.note})" if self.note else text


def at_least(low: float, note: str = "") -> Bound:
    return Bound(low=low, note=note)


def above(low: float, note: str = "") -> Bound:
    return Bound(low=low, low_open=True, note=note)


def within(
    low: float, high: float, *, low_open: bool = False, high_open: bool = False, note: str = ""
) -> Bound:
    return Bound(low, high, low_open, high_open, note)


FINITE = Bound()
"""No bound beyond being finite: any sign makes sense."""
COUNT = at_least(1)
SHARE = within(0, 1)

BOUNDS: MappingProxyType[str, Bound] = MappingProxyType(
    {
        # the run
        "seed": within(0, 2**32 - 1),  # numpy's global generator takes 32-bit seeds
        "max_nonfinite_skips": at_least(0, "0 = stop at the first"),
        # steps, passes, batches and sequence lengths: zero of any of them trains nothing
        "max_steps": COUNT,
        "rounds": COUNT,
        "ppo_epochs": COUNT,
        "mu": COUNT,
        "epochs_per_round": COUNT,
        "refresh_every": COUNT,
        "batch_size": COUNT,
        "grad_accum": COUNT,
        "micro_batch_size": COUNT,
        "mini_batch_size": COUNT,
        "prompts_per_step": COUNT,
        "prompts_per_round": COUNT,
        "keep_last": COUNT,
        "max_length": COUNT,
        "reward_max_length": COUNT,
        "max_new_tokens": COUNT,
        "eval_max_new_tokens": COUNT,
        "sample_max_new_tokens": COUNT,
        # prompts, rows and samples drawn
        "train_prompts": COUNT,
        "eval_prompts": COUNT,
        "label_prompts": COUNT,
        "heldout_prompts": COUNT,
        "num_prompts": COUNT,
        "sft_rows_per_task": COUNT,
        "eval_rows_per_task": COUNT,
        "eval_prompts_per_task": COUNT,
        "advice_eval_samples": COUNT,
        "sft_rows": COUNT,
        "sft_eval_rows": COUNT,
        "collect_prompts": COUNT,
        "heldout_rankings": COUNT,
        "eval_samples": COUNT,
        "points_per_run": COUNT,
        "arith_eval_samples": COUNT,
        "samples_per_prompt": COUNT,
        "OnlineDPOConfig.samples_per_prompt": at_least(2, "a preference needs two responses"),
        "IterativeGRPOConfig.samples_per_prompt": at_least(2, "a ranking needs two responses"),
        "responses_per_prompt": at_least(2, "a ranking needs two responses"),
        "group_size": at_least(2, "the baseline comes from the other responses"),
        "num_samples": at_least(0, "0 = none logged"),
        "report_samples": at_least(0, "0 = none shown"),
        # model shapes
        "num_heads": COUNT,
        "num_layers": COUNT,
        "hidden_size": COUNT,
        "intermediate_size": COUNT,
        "vocab_size": COUNT,
        "lora_r": at_least(0, "0 = full fine-tuning"),
        "lora_alpha": COUNT,
        "lora_dropout": within(0, 1, high_open=True),
        # when periodic work runs
        "eval_every": at_least(0, "0 = only at the end"),
        "PolicyRunConfig.eval_every": at_least(-1, "0 = only at the start and end, -1 = never"),
        "PolicyRunConfig.micro_batch_size": at_least(0, "0 = the whole mini-batch at once"),
        "SampleConfig.k": within(2, 9),
        "save_every": at_least(0, "0 = only the final model"),
        "sample_every": at_least(0, "0 = never"),
        "warmup_steps": at_least(0),
        # budgets
        "max_labels": at_least(0, "0 = all rows"),
        "offline_max_labels": at_least(0, "0 = all rows"),
        "label_budget": at_least(0, "0 = no limit"),
        "max_pairs": at_least(0, "0 = all pairs"),
        # the optimizer
        "lr": above(0),
        "critic_lr": above(0),
        "min_lr_ratio": SHARE,
        "weight_decay": at_least(0),
        "max_grad_norm": at_least(0, "0 = no clipping"),
        # losses
        "beta": at_least(0, "0 = no KL term"),
        "DPOConfig.beta": above(0),  # the implicit reward's scale
        "OnlineDPOConfig.beta": above(0),
        "dpo_betas": above(0),
        "label_smoothing": within(0, 0.5, high_open=True),
        "nll_weight": at_least(0, "0 = off"),
        "imitation_coef": at_least(0, "0 = off"),
        "centering_coef": at_least(0, "0 = off"),
        "clip_eps": above(0),
        # GRPO's lower clip alone: the ratio may fall to 1 - clip_eps, and a ratio is > 0
        "GRPOConfig.clip_eps": within(
            0, 1, low_open=True, high_open=True, note="1 or more never clips"
        ),
        "clip_eps_high": above(0),
        "value_clip": at_least(0, "0 = no clipping"),
        "adv_eps": above(0),  # keeps a group whose rewards are all equal from dividing by 0
        "gamma": SHARE,
        "lam": SHARE,
        "kl_coef": at_least(0),
        "kl_clamp": at_least(0, "0 = no clamp"),
        "kl_target": at_least(0, "0 = a fixed beta"),
        "kl_horizon": COUNT,
        "kl_limit": above(0),
        # sampling: logits are divided by the temperature
        "temperature": above(0),
        "label_temperature": above(0),
        "revise_temperature": at_least(0, "0 = greedy"),
        "top_p": within(0, 1, low_open=True),
        "top_k": at_least(0, "0 = off"),
        # rewards, labelling and selection
        "reward_timeout_s": at_least(0, "0 = no limit"),
        "reward_first_call_timeout_s": at_least(0, "0 = no limit"),
        "human_timeout_s": at_least(0, "0 = no limit"),
        "human_port": within(0, 65535, note="0 = a free port"),
        "human_hold_minutes": above(0),
        # the reward-model source refuses a negative one (a bonus for uncertain rewards)
        "reward_uncertainty_coef": at_least(0, "0 = off"),
        "missing_eos_penalty": at_least(0, "0 = none"),
        "reward_threshold": FINITE,
        "wrong_coef": FINITE,
        "annotator_temperature": at_least(0, "0 = calibrate"),
        "target_agreement": within(0.5, 1, low_open=True, high_open=True),
        "min_margin": within(0, 0.5, high_open=True),  # |P - 1/2| never passes 0.5
        "keep_fraction": within(0, 1, low_open=True),
        "offline_fraction": within(0, 1, low_open=True, high_open=True),
        "replay_fraction": within(0, 1, high_open=True),
        "flawed_fraction": SHARE,
        "shortcut_fraction": SHARE,
    }
)


def bound_of(cls: type, name: str) -> Bound | None:
    """The bound of field `name` of config class `cls`: a `"Class.name"` entry of `cls` or of its
    nearest base that has one, else the `name` entry; None when the table has neither."""
    for klass in cls.__mro__:
        bound = BOUNDS.get(f"{klass.__name__}.{name}")
        if bound is not None:
            return bound
    return BOUNDS.get(name)


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every numeric setting of `cfg`, its sections included, against `BOUNDS`.

    Args:
        cfg: a config dataclass instance.
        prefix: the dotted section `cfg` sits in, for the error ("sft.").

    Raises:
        ConfigError: one line naming the key, the rule and the value:
            `config key 'sft.lr': must be > 0, got -1.0`.
    """
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        key = prefix + field.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, f"{key}.")
        elif isinstance(value, (list, tuple)):
            if any(_is_non_finite(item) for item in value):
                raise ConfigError(f"config key '{key}': must hold finite numbers, got {value!r}")
            for item in value:  # each number of a list is held to the field's bound
                if _is_number(item):
                    _check_number(type(cfg), field.name, key, item)
        elif _is_number(value):
            _check_number(type(cfg), field.name, key, value)
        elif field.name == "device" and isinstance(value, str):
            _check_device(key, value)


def _check_device(key: str, value: str) -> None:
    """`auto` or a name torch can parse (cpu, cuda, cuda:1, mps, ...); whether the device is
    present is checked when the run starts."""
    if value == "auto":
        return
    import torch  # here, not at the top: `rlhfkit --help` must not import torch

    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"config key '{key}': not a device: {value!r} (auto, cpu, cuda, cuda:1, mps, ...)"
        ) from None


def _check_number(cls: type, name: str, key: str, value: float) -> None:
    if _is_non_finite(value):
        raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
    bound = bound_of(cls, name)
    if bound is not None and not bound.holds(value):
        raise ConfigError(f"config key '{key}': must be {bound.describe()}, got {value!r}")


def _is_number(value: Any) -> bool:
    # bool is an int to Python, but a flag is not a size
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_non_finite(value: Any) -> bool:
    # floats only: an int is finite, and math.isfinite overflows on one past float's range
    return isinstance(value, float) and not math.isfinite(value)


def _number(value: float) -> str:
    """1 for 1.0 and 4294967295 for 2**32 - 1, so a bound reads as it was written."""
    return str(int(value)) if float(value).is_integer() else repr(value)
