"""Loading any Hugging Face causal LM directory (or the tiny default) unchanged."""

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from rlhfkit.errors import RlhfkitError


def _check_model_dir(path: str | Path) -> None:
    if not Path(path).is_dir():
        raise RlhfkitError(f"model directory {path} does not exist")
    if not (Path(path) / "config.json").is_file():
        raise RlhfkitError(f"{path} is not a Hugging Face model directory (no config.json)")


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a model; a missing pad token falls back to EOS (common for
    decoder-only models) because batches are padded."""
    _check_model_dir(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RlhfkitError(f"the tokenizer at {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(path)`: the policy, exactly as saved."""
    _check_model_dir(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
