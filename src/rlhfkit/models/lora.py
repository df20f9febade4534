"""LoRA through `peft`: adapters on a causal LM, the base model as the reference, merged saves.

With adapters, the frozen reference of PPO/GRPO/DPO is the same weights with the adapters
switched off, so no second copy of the model is held in memory.
"""

import copy
from contextlib import contextmanager
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model


def add_lora(
    model, r: int, alpha: int, dropout: float = 0.0, target_modules: str | list[str] = "all-linear"
):
    """Wrap `model` with fresh LoRA adapters of rank `r`; only the adapters train."""
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_lora(base_model, adapter_dir: str | Path):
    """Adapters saved by `save_pretrained` on a LoRA model, put back on `base_model`, trainable."""
    return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=True)


@contextmanager
def adapters_disabled(model):
    """Inside, `model` computes with its base weights only: the reference policy."""
    with model.disable_adapter():
        yield model


def merged_copy(model):
    """A plain transformers model with the adapters merged into a copy of the weights (the
    training model keeps its adapters)."""
    return copy.deepcopy(model).merge_and_unload()
