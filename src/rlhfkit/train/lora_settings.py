"""The LoRA settings the trainers share (`lora_r`, `lora_alpha`, `lora_dropout`,
`lora_target_modules`), checked together before anything loads."""

from dataclasses import fields

from rlhfkit.errors import ConfigError
from rlhfkit.models.lora import target_names
from rlhfkit.runtime.config import plain_value, written

ADAPTER_SETTINGS = ("lora_alpha", "lora_dropout", "lora_target_modules")
"""What shapes the adapters, which lora_r=0 (full fine-tuning) does not make."""


def check_lora_settings(cfg) -> None:
    """Refuse LoRA settings that would change nothing: an adapter setting away from its default
    with lora_r=0, and `lora_dropout` where `disable_dropout` (the policy trainers', DPO's) turns
    the adapters' dropout off with the rest; and adapters on no layer (`lora_target_modules`
    empty with lora_r > 0). The names of the layers are checked against the model when it loads.

    Raises:
        ConfigError: "lora_dropout=0.1 shapes LoRA's adapters, and lora_r=0 trains the whole
            model without any: set lora_r > 0, or leave lora_dropout out".
    """
    if cfg.lora_r == 0:
        defaults = {field.name: field.default for field in fields(cfg)}
        for name in ADAPTER_SETTINGS:
            value = plain_value(getattr(cfg, name))
            if value != plain_value(defaults[name]) and value != [defaults[name]]:
                raise ConfigError(
                    f"{name}={written(value)} shapes LoRA's adapters, and lora_r=0 trains the "
                    "whole model "
                    f"without any: set lora_r > 0, or leave {name} out"
                )
    else:
        target_names(cfg.lora_target_modules)
    if cfg.lora_dropout > 0 and getattr(cfg, "disable_dropout", False):
        raise ConfigError(
            f"lora_dropout={cfg.lora_dropout} with disable_dropout=true: the policy's dropout, "
            "the adapters' too, is off (the losses compare log-probs taken without it); set "
            "disable_dropout=false to train with it, or lora_dropout=0"
        )
