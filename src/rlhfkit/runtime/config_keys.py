"""What an unknown config key gets back: the key most likely meant, from a close spelling, the
same name in other case, or the name TRL and transformers give the setting."""

import difflib

from rlhfkit.errors import ConfigError

# TRL's and transformers' names of settings rlhfkit names otherwise, for a user coming from them
# (the first of rlhfkit's names that the config has is suggested: `kl_coef` is PPO's, `beta` the
# others'; a policy trainer's rows per forward/backward pass are its micro_batch_size)
PEER_NAMES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "model_name_or_path": ("model",),
    "per_device_train_batch_size": ("batch_size", "micro_batch_size"),
    "gradient_accumulation_steps": ("grad_accum",),
    "num_generations": ("group_size",),
    "max_completion_length": ("max_new_tokens",),
    "num_ppo_epochs": ("ppo_epochs",),
    "cliprange": ("clip_eps",),
    "epsilon": ("clip_eps",),
    "epsilon_high": ("clip_eps_high",),
    "loss_type": ("loss", "loss_aggregation"),
    "rpo_alpha": ("nll_weight",),
    "precompute_ref_log_probs": ("precompute_ref",),
    "kl_coef": ("beta",),
    "beta": ("kl_coef",),
    "eval_steps": ("eval_every",),
    "save_steps": ("save_every",),
    "bf16": ("precision",),
}


def unknown_key(prefix: str, name: str, valid: list[str]) -> ConfigError:
    """The error for key `name` (in section `prefix`, empty at the top level) that the config
    does not have among `valid`, naming the key most likely meant."""
    message = f"unknown config key '{_dotted(prefix, name)}'"
    section, _, rest = name.partition(".")
    if rest and section in valid:  # a dotted key inside a file: sections nest there
        return ConfigError(f"{message}: in a file, nest it: '{section}:' then '  {rest}: ...'")
    if ours := _peer_name(name, valid):
        message += f" (TRL's name; rlhfkit's is '{_dotted(prefix, ours)}')"
    elif close := _close_key(name, valid):
        message += f" (did you mean '{_dotted(prefix, close)}'?)"
    return ConfigError(message)


def _peer_name(name: str, valid: list[str]) -> str | None:
    return next((ours for ours in PEER_NAMES.get(name, ()) if ours in valid), None)


def _close_key(name: str, valid: list[str]) -> str | None:
    """The valid key `name` was most likely meant as: the same in other case (`LR`), a close
    spelling (`lrr`), or the rlhfkit name of a close spelling of a peer's (`learnign_rate`)."""
    lowered = {key.lower(): key for key in valid}
    if name.lower() in lowered:
        return lowered[name.lower()]
    if close := difflib.get_close_matches(name.lower(), list(lowered), n=1):
        return lowered[close[0]]
    peer = difflib.get_close_matches(name.lower(), list(PEER_NAMES), n=1)
    return _peer_name(peer[0], valid) if peer else None


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
