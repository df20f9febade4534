"""The embedded default: a tiny Llama-style model and a byte-level BPE tokenizer, built locally.

Both are saved as an ordinary Hugging Face model directory, so every later stage loads them
exactly as it would load a real model (`AutoModelForCausalLM.from_pretrained(path)`). The
pipeline builds one on its tasks' text; `rlhfkit models tiny --corpus FILE` builds one on a
user's own text (`new_tiny_model`).
"""

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from rlhfkit.runtime.checkpoint import clear_new_output, publish_new_dir, temporary_sibling

EOS, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (EOS, PAD, IM_START, IM_END)

# ChatML: the assistant turn ends with <|im_end|>, which the model learns to emit.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`, digits split one per token.

    Single-digit tokens make arithmetic learnable for a small model: a BPE that merges "47"
    into one token hides the digit structure the model must compute with.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, pad_token=PAD, model_max_length=1024
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def tiny_llama_config(
    *,
    vocab_size: int,
    eos_token_id: int,
    pad_token_id: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 384,
    max_positions: int = 256,
) -> LlamaConfig:
    """A real Llama config, only small: RMSNorm, RoPE, SiLU-gated MLP, tied embeddings."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        attention_dropout=0.0,
    )


def build_tiny_model(
    out_dir: str | Path,
    corpus: Iterable[str],
    *,
    seed: int,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 384,
    max_positions: int = 256,
) -> Path:
    """Train the tokenizer, initialise the model with `seed`, save both to `out_dir`."""
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(corpus, vocab_size)
    config = tiny_llama_config(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_positions=max_positions,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # A chat turn ends with <|im_end|>, plain text with EOS: generation stops at either.
    model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids(IM_END),
    ]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def new_tiny_model(out_dir: str | Path, corpus: list[str], *, seed: int, **sizes) -> Path:
    """`build_tiny_model` into `out_dir`, which must not exist yet or be empty; written beside
    it and renamed into place, so a crash leaves no half-built model under that name."""
    out_dir = Path(out_dir)
    clear_new_output(out_dir)
    tmp = temporary_sibling(out_dir)
    try:
        build_tiny_model(tmp, corpus, seed=seed, **sizes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_new_dir(tmp, out_dir)
    return out_dir


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    """Tokens per whitespace-separated word over `texts`: the fewer, the better the tokenizer
    fits them (on these docs' prose: 3.9 for the demo's, 2.5 for 1024 tokens trained on it)."""
    words = sum(len(text.split()) for text in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return tokens / max(words, 1)
