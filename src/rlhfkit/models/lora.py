"""LoRA through `peft`: adapters on a causal LM, the base model as the reference, merged saves;
and adapters on a reward model's backbone.

With adapters, the frozen reference of PPO/GRPO/DPO is the same weights with the adapters
switched off, so no second copy of the model is held in memory. A reward model keeps its own
class (backbone + score head): the adapters are injected into the backbone's linear layers in
place, the head trains whole, and it saves as a plain sequence classifier with the adapters
merged.
"""

import copy
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from rlhfkit.errors import ConfigError
from rlhfkit.models.loading import config_as_loaded
from rlhfkit.rollout.architecture import layer_weight_bias

ALL_LINEAR = "all-linear"


def add_lora(
    model,
    r: int,
    alpha: int,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = ALL_LINEAR,
):
    """Wrap `model` with fresh LoRA adapters of rank `r` on `target_modules` (`lora_targets`);
    only the adapters train."""
    config = _lora_config(model, r, alpha, dropout, target_modules, task_type="CAUSAL_LM")
    _name_base_by_absolute_path(model)
    with _peft_reading_a_renamed_attribute():
        return get_peft_model(model, config)


def _lora_config(model, r, alpha, dropout, target_modules, **task) -> LoraConfig:
    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(model, target_modules),
        fan_in_fan_out=_has_conv1d(model),
        **task,
    )


def target_names(names: str | Sequence[str]) -> list[str]:
    """The setting `lora_target_modules` as a list of names, refused when empty (peft would
    fail deep inside with "No `target_modules` passed"); what it needs no model to check."""
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ConfigError(
            f"lora_target_modules: empty; name the layers that get adapters, or {ALL_LINEAR}"
        )
    return names


def lora_targets(model: nn.Module, names: str | Sequence[str]) -> str | list[str]:
    """peft's `target_modules` for the setting `lora_target_modules`: "all-linear" (every linear
    layer but the output head), or layer names, each the end of a module's dotted name (`q_proj`,
    `self_attn.q_proj`), as peft matches a list. Each must name a linear layer: an unknown name,
    a norm or an output head tied to the input embeddings (whose merge would change them too) is
    refused, naming the layers there are."""
    names = target_names(names)
    if names == [ALL_LINEAR]:
        return ALL_LINEAR
    linear = [
        (name, _tied_head(model, module))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D))
    ]
    layers = [name for name, tied in linear if not tied]
    for target in names:
        matches = [tied for name, tied in linear if name == target or name.endswith(f".{target}")]
        if matches and all(matches):
            raise ConfigError(
                f"lora_target_modules: {target!r} is the output head, which shares its weight "
                "with the input embeddings: merging adapters into it would change them too; "
                "leave it out (or give the model untied embeddings)"
            )
        if not matches:
            known = sorted({name.rsplit(".", 1)[-1] for name in layers})
            raise ConfigError(
                f"lora_target_modules: {target!r} is not a linear layer of the model (or is "
                f"combined with {ALL_LINEAR!r}); its layers: {', '.join(known)}, or {ALL_LINEAR}"
            )
    return names


def _tied_head(model: nn.Module, module: nn.Module) -> bool:
    """Whether `module` is the output head and shares its weight with the input embeddings."""
    if not hasattr(model, "get_output_embeddings") or module is not model.get_output_embeddings():
        return False
    return module.weight is model.get_input_embeddings().weight


def _has_conv1d(model) -> bool:
    """Whether the model's linear layers are GPT-2's `Conv1D` (weights stored transposed): peft
    needs `fan_in_fan_out` for them, and warns on every layer when it has to set it itself."""
    return any(isinstance(m, Conv1D) for m in model.modules())


def _name_base_by_absolute_path(model) -> None:
    """peft writes the base model's `name_or_path` into every saved adapter's config as it was
    typed: a relative directory (`model=models/qwen`) would load only from the same working
    directory, and elsewhere sends `AutoPeftModel` looking for it on the Hub."""
    name = model.__dict__.get("name_or_path") or ""
    if name and Path(name).is_dir():
        model.name_or_path = str(Path(name).absolute())


def save_pretrained(model, directory: str | Path, **kwargs) -> None:
    """`model.save_pretrained(directory, **kwargs)` with the config as loaded (`config_as_loaded`);
    a LoRA model's saves its adapters alone.
    peft otherwise writes the whole base output head (or input embeddings) beside them whenever
    one is among the targets (`save_embedding_layers="auto"`, with a warning on each save): a
    copy of the starting model's largest matrix in every checkpoint, which loading never needs."""
    if isinstance(model, PeftModel):
        kwargs["save_embedding_layers"] = False
    with config_as_loaded(model):
        model.save_pretrained(directory, **kwargs)


def load_lora(base_model, adapter_dir: str | Path):
    """Adapters saved by `save_pretrained` on a LoRA model, put back on `base_model`, trainable."""
    with _peft_reading_a_renamed_attribute():
        return PeftModel.from_pretrained(base_model, str(adapter_dir), is_trainable=True)


@contextmanager
def _peft_reading_a_renamed_attribute():
    """peft reads `is_gradient_checkpointing`, which transformers 5 renamed and warns about on
    every read: a FutureWarning in every LoRA run that no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


@contextmanager
def adapters_disabled(model):
    """Inside, `model` computes with its base weights only: the reference policy."""
    with model.disable_adapter():
        yield model


def merged_copy(model):
    """A plain transformers model with the adapters merged into a copy of the weights (the
    training model keeps its adapters)."""
    return copy.deepcopy(model).merge_and_unload()


def load_gathered(model: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """`model` (unsharded, with the same adapters) given `weights`, the whole state dict
    gathered from a sharded copy of it (`runtime.distributed.full_state_dict`, which writes a
    tied weight under one name only); every other weight must be there."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(
        dict(model.named_parameters())
    )
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"gathered weights do not fit {type(model).__name__}: missing "
            f"{sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )
    return model


def merged_gathered(
    base, weights: dict[str, torch.Tensor], r: int, alpha: int, target_modules: str | Sequence[str]
):
    """A plain transformers model: `base` (an unsharded copy of the starting model) with fresh
    rank-`r` adapters on `target_modules`, given the weights gathered from the sharded LoRA
    policy (`load_gathered`), merged. Under torchrun the trained policy's parameters are shards
    and cannot be merged in place, so rank 0 merges this copy."""
    adapted = add_lora(base, r, alpha, target_modules=target_modules)
    return load_gathered(adapted, weights).merge_and_unload()


def add_backbone_lora(
    reward_model,
    r: int,
    alpha: int,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] = ALL_LINEAR,
) -> None:
    """Fresh LoRA adapters of rank `r` on a `RewardModel`'s backbone (every linear layer, or
    `target_modules` as `lora_targets` reads them), in place; only they and the score head
    train: nothing of the backbone, nor the imitation term's LM head, the base model's own (a
    separate projection when the embeddings are untied). Linear layers as `add_lora` finds
    them: `nn.Linear`, and GPT-2's `Conv1D`, its only ones."""
    backbone = reward_model.backbone
    config = _lora_config(backbone, r, alpha, dropout, target_modules)
    inject_adapter_in_model(config, backbone)
    for name, param in backbone.named_parameters():
        param.requires_grad_("lora_" in name)
    if reward_model.lm_head is not None:
        reward_model.lm_head.requires_grad_(False)


def has_backbone_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights that train (adapters and head), for a checkpoint: the rest is the start."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict with every LoRA layer's delta merged into its base weight, under the
    names the plain model has (`q_proj.weight`, not `q_proj.base_layer.weight`), adapters gone."""
    merged = {
        f"{name}.weight": layer_weight_bias(module)[0].detach()
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    }
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = merged.get(plain, value)
    return out
