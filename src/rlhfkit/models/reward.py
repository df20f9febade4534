"""Reward (and later value) models: a transformer backbone with a linear head of N outputs.

The model is held as an `AutoModelForSequenceClassification` with `num_labels = heads`, so a
saved reward model is an ordinary Hugging Face directory (safetensors) that
`AutoModelForSequenceClassification.from_pretrained` loads back. Built from a causal-LM
directory, the backbone weights are reused and only the head is new. N > 1 heads form an
ensemble on one backbone: their mean is the reward, their std the uncertainty (seed 000).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    DynamicCache,
)

from rlhfkit.data.length_chunks import ROWS_PER_CHUNK, forward_in_length_chunks
from rlhfkit.data.shared_prompts import common_prefix_starts, shares_prompts, split_at_response
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.loading import (
    check_weight_files,
    read_model_config,
    resolve_model_path,
    weights_error,
)
from rlhfkit.models.lora import has_backbone_lora, merged_state_dict, save_pretrained
from rlhfkit.rollout.engine import positions_from_mask
from rlhfkit.rollout.forward import is_checkpointing


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # (batch, heads) score at the last non-padding token
    hidden: torch.Tensor  # (batch, seq, hidden) final hidden states


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch,) index of the last non-padding token; right or left padding both work.

    Naive equivalent: `[max(i for i, m in enumerate(row) if m) for row in attention_mask]`.
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(dim=1)


def _score_head(model: nn.Module) -> nn.Linear:
    """The classification head: the one child that is not the backbone (`score` in Llama)."""
    heads = [m for name, m in model.named_children() if name != model.base_model_prefix]
    if len(heads) != 1 or not isinstance(heads[0], nn.Linear):
        raise RlhfkitError(f"cannot find a single linear score head in {type(model).__name__}")
    return heads[0]


def is_reward_model(config) -> bool:
    """Whether a saved model's config is a sequence classifier (a trained reward model)."""
    return any(a.endswith("ForSequenceClassification") for a in config.architectures or [])


# The config.json key naming the objective a reward model was trained with ("pairwise",
# "process"): the weights alone cannot tell where the model learnt to read its score.
OBJECTIVE_KEY = "rlhfkit_reward_objective"
PROCESS = "process"


def mark_objective(model: "RewardModel", objective: str) -> None:
    """Record `objective` in the model's config, so that what it saves says how it scores."""
    setattr(model.config, OBJECTIVE_KEY, objective)


def is_process_reward_model(config) -> bool:
    """Whether a saved reward model's config says it was trained with the process objective
    (a model saved before the objective was recorded says nothing: False)."""
    return getattr(config, OBJECTIVE_KEY, None) == PROCESS


def check_outcome_reward_model(path: str | Path, config, use: str) -> None:
    """A one-line error when the model at `path` is a process reward model and `use` would read
    a whole response's score at its end (an outcome reward, a critic's start): it learnt to
    score each step at the step's last token and never learnt a score at the EOS token."""
    if is_process_reward_model(config):
        raise RlhfkitError(
            f"{use}: {path} is a process reward model (rm objective=process): it scores each "
            "step at the step's last token, never a whole response at its end, so it cannot "
            "serve as an outcome reward; it can go on training with rm objective=process "
            f"model={path}. Use a reward model trained with objective=pairwise"
        )


class RewardModel(nn.Module):
    """Backbone + head scoring a sequence at its last non-padding token.

    `lm_head` (optional) maps hidden states to vocabulary logits for the imitation term
    (LM loss on the preferred response, seed 002); it is not part of the saved model.
    """

    def __init__(self, model: nn.Module, lm_head: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.lm_head = lm_head

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def backbone(self) -> nn.Module:
        """The transformer under the head (`model.model` in Llama): final hidden states."""
        return getattr(self.model, self.model.base_model_prefix)

    @property
    def config(self):
        """The sequence classifier's config (its positions, its heads), as a transformers model
        exposes its own."""
        return self.model.config

    @property
    def num_heads(self) -> int:
        return self.model.config.num_labels

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        num_heads: int = 1,
        with_lm_head: bool = False,
        lm_head_from: str | Path | None = None,
        dtype=torch.float32,
    ) -> "RewardModel":
        """Load a saved reward model, or start one from any causal-LM directory (or GGUF file).
        `lm_head_from`: the causal LM whose output projection the imitation term uses when the
        embeddings are untied (default `path`; a saved reward model keeps none)."""
        path = resolve_model_path(path)
        config = read_model_config(path)
        if is_reward_model(config) and config.num_labels != num_heads:
            raise RlhfkitError(
                f"{path} has {config.num_labels} reward heads, {num_heads} were asked for"
            )
        check_weight_files(path)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_heads, dtype=dtype, use_safetensors=True
            )
        except (SafetensorError, OSError, ValueError, KeyError) as error:
            raise weights_error(path, error) from None
        if model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        head_path = path if lm_head_from is None else resolve_model_path(lm_head_from)
        lm_head = _lm_head_for(model, head_path, dtype) if with_lm_head else None
        return cls(model, lm_head)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> RewardOutput:
        """Args: input_ids, attention_mask (batch, seq). Returns rewards (batch, heads)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        # Read where transformers' sequence classifiers read: the last token that is not the
        # pad token, so a saved model scores alike in both (it differs when pad == EOS).
        scored = attention_mask.bool() & (input_ids != self.model.config.pad_token_id)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(scored)]
        return RewardOutput(rewards=self._scores(last), hidden=hidden)

    def rewards_by_length(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        rows_per_chunk: int = ROWS_PER_CHUNK,
        *,
        response_mask: torch.Tensor | None = None,
        group_size: int = 1,
    ) -> torch.Tensor:
        """(batch, heads) the rewards of `forward` for right-padded rows, computed over
        length-sorted chunks so that padding costs nothing (`data.length_chunks`). With
        `response_mask` and `group_size` = K, rows [k*K, (k+1)*K) that answer one prompt run
        it once (`shared_prompt_rewards`)."""
        tensors = {"input_ids": input_ids, "attention_mask": attention_mask}
        # a prompt run once hands its keys and values to the responses through a cache, which
        # activation checkpointing drops: then every row runs whole
        if response_mask is None or group_size <= 1 or is_checkpointing(self.model):
            return forward_in_length_chunks(
                lambda t: self(t["input_ids"], t["attention_mask"]).rewards,
                tensors,
                attention_mask.sum(dim=1),
                rows_per_chunk,
            )
        return forward_in_length_chunks(
            lambda t: self.shared_prompt_rewards(**t, group_size=group_size),
            {**tensors, "response_mask": response_mask},
            attention_mask.sum(dim=1),
            rows_per_chunk,
            group_size,
        )

    def shared_prompt_rewards(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        group_size: int,
    ) -> torch.Tensor:
        """(batch, heads) the rewards of `forward`, the prefix each group's rows share (its prompt,
        and whatever its responses have in common) run once: the rest attends to its keys and
        values, repeated (with their gradient). Falls back to `forward` when a row's remaining
        part has no scored token (the reward is read at the last one)."""
        starts = common_prefix_starts(input_ids, attention_mask, group_size)
        ids, attention, _, width = split_at_response(
            input_ids, attention_mask, response_mask, starts
        )
        prompt_ids, prompt_mask = ids[:, :-width], attention[:, :-width]
        responses = ids[:, -width:]
        scored = attention[:, -width:] & (responses != self.model.config.pad_token_id)
        if not shares_prompts(prompt_ids, prompt_mask, group_size) or not bool(
            scored.any(dim=1).all()
        ):
            return self(input_ids, attention_mask).rewards
        cache = DynamicCache()
        self.backbone(
            input_ids=prompt_ids[::group_size],
            attention_mask=prompt_mask[::group_size].long(),
            position_ids=positions_from_mask(prompt_mask[::group_size]),
            past_key_values=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(group_size)
        positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(width, device=ids.device)
        hidden = self.backbone(
            input_ids=responses,
            attention_mask=attention.long(),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(scored)]
        return self._scores(last)

    def token_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """(batch, seq, heads) head applied at every position (process rewards score steps)."""
        return self._scores(hidden)

    def _scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """The head on (..., d) `hidden`, in float32 also under bf16 autocast: rewards are
        compared and subtracted (pair accuracy and its ties, Bradley-Terry margins, PPO's
        values), and bf16 keeps 8 bits of them; a (d -> heads) multiply costs nothing."""
        head = _score_head(self.model)
        bias = None if head.bias is None else head.bias.float()
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), head.weight.float(), bias)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            raise RlhfkitError("the imitation term needs the LM head: load with with_lm_head=True")
        return self.lm_head(hidden)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """A plain sequence classifier; backbone adapters (`lora.add_backbone_lora`) merged."""
        if has_backbone_lora(self.model):
            save_pretrained(self.model, out_dir, state_dict=merged_state_dict(self.model))
        else:
            save_pretrained(self.model, out_dir)


def value_model_from(path: str | Path) -> RewardModel:
    """A one-head model for PPO's critic, started from `path`: a reward model keeps its backbone
    and head (an ensemble's heads averaged into one, so the critic starts at the ensemble's mean
    reward); a causal LM gets a fresh head."""
    config = read_model_config(path)
    check_outcome_reward_model(path, config, "the critic's start (critic_init=reward_model)")
    heads = config.num_labels if is_reward_model(config) else 1
    model = RewardModel.from_pretrained(path, num_heads=heads)
    if heads > 1:
        name, head = next(
            (n, m) for n, m in model.model.named_children() if n != model.model.base_model_prefix
        )
        single = nn.Linear(head.in_features, 1, bias=head.bias is not None, dtype=head.weight.dtype)
        with torch.no_grad():
            single.weight.copy_(head.weight.mean(dim=0, keepdim=True))
            if head.bias is not None:
                single.bias.copy_(head.bias.mean().reshape(1))
        setattr(model.model, name, single)
        model.model.config.num_labels = 1
    return model


def _lm_head_for(model: nn.Module, path: str | Path, dtype) -> nn.Module:
    """The vocabulary projection for the imitation loss. With tied embeddings it is the
    backbone's own input embedding (shared, trained with it); otherwise the causal LM's head."""
    embeddings = model.get_input_embeddings()
    if getattr(model.config, "tie_word_embeddings", False):
        head = nn.Linear(embeddings.weight.shape[1], embeddings.weight.shape[0], bias=False)
        head.weight = embeddings.weight
        return head
    if is_reward_model(read_model_config(path)):
        # loading it as a causal LM would silently draw a random LM head
        raise RlhfkitError(
            f"{path} is a saved reward model with untied embeddings: it keeps no LM head for "
            "the imitation term; start from the causal LM, or set imitation_coef=0"
        )
    causal = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return causal.get_output_embeddings()
