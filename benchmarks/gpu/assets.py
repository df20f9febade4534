"""The GPU benchmark's assets, in the shared CPU benchmark's layout (`tokenizer/`, `policy/`,
`seqcls/`, `data/`), so that its TRL script and rlhfkit's workload configs read them unchanged.

- tokenizer: byte-level BPE trained to exactly the model's vocabulary on made-up words (so that
  every token the model can sample decodes), EOS `<|endoftext|>` = 0, PAD `<|pad|>` = 1.
- policy: a randomly initialised Llama of the asked shape, fp32, tied embeddings. Dimension 0 of
  every embedding row is +2, of the four special tokens' rows -2: through the tied LM head the
  special tokens sit about 10 nats below every other token, so no response stops early (P(EOS)
  about 1e-9 per token, measured on the 0.5B shape) and both libraries sample every token of
  every response without a library-specific setting.
- seqcls: LlamaForSequenceClassification with the policy's backbone and a N(0, 0.02) score head:
  the reward model's start, PPO's critic and PPO's reward model.
- data: `prompts.jsonl` (arithmetic questions with `answer`, for the shared rule reward),
  `sft.jsonl` and `preferences.jsonl` whose every sequence is exactly `seq_tokens` tokens long
  with the EOS the trainers append.
- manifest.json: the shape, the sizes, every row's token count.
"""

import dataclasses
import json
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from workloads import Sizes

from rlhfkit.models.tiny import train_tokenizer
from rlhfkit.runtime.memory_model import ModelShape

SEED = 0
SPECIAL_SHIFT = 2.0
CONSONANTS, VOWELS = "bcdfghjklmnprstvwz", "aeiou"
ROWS = 256  # SFT rows and preference pairs (the runs wrap around)


def made_up_words(count: int, rng: random.Random) -> list[str]:
    """`count` distinct words of 2-4 consonant-vowel syllables."""
    syllables = [c + v for c in CONSONANTS for v in VOWELS]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((2, 3, 3, 4)))))
    return sorted(words)


def arithmetic(rng: random.Random) -> dict:
    """One question in the shared benchmark's format: {"prompt": "Q: What is 7 + 5?\\nA:", ...}."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 19), rng.randint(2, 19)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        a, b = (b, a) if op == "-" and b > a else (a, b)
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"prompt": f"Q: What is {a} {op} {b}?\nA:", "answer": str(answer)}


def build_tokenizer(vocab: int, rng: random.Random):
    """The tokenizer and the words that are one token each (with their leading space)."""
    words = made_up_words(vocab + vocab // 4, rng)
    corpus = [" ".join(words[i : i + 20]) for i in range(0, len(words), 20)] * 2
    corpus += [arithmetic(rng)["prompt"] + " 42" for _ in range(2000)]
    tokenizer = train_tokenizer(corpus, vocab)
    if len(tokenizer) != vocab:
        raise SystemExit(f"the tokenizer reached {len(tokenizer)} tokens, not {vocab}")
    ids = tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return tokenizer, [w for w, i in zip(words, ids) if len(i) == 1]


def build_models(shape: ModelShape, tokenizer, out: Path) -> None:
    config = LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    policy = LlamaForCausalLM(config).eval()
    specials = sorted(tokenizer.all_special_ids)
    with torch.no_grad():
        embedding = policy.model.embed_tokens.weight
        embedding[:, 0] = SPECIAL_SHIFT
        embedding[specials, 0] = -SPECIAL_SHIFT
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    policy.generation_config.pad_token_id = tokenizer.pad_token_id
    policy.save_pretrained(out / "policy")

    config.num_labels = 1
    seqcls = LlamaForSequenceClassification(config).eval()
    backbone = {k: v for k, v in policy.state_dict().items() if k.startswith("model.")}
    missing, _ = seqcls.load_state_dict(backbone, strict=False)
    assert missing == ["score.weight"], missing
    generator = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        seqcls.score.weight.copy_(
            torch.randn(seqcls.score.weight.shape, generator=generator) * 0.02
        )
    seqcls.save_pretrained(out / "seqcls")
    for folder in ("tokenizer", "policy", "seqcls"):
        tokenizer.save_pretrained(out / folder)


def exact_length_text(words: list[str], count: int, rng: random.Random) -> str:
    """`count` one-token words, each with its leading space: exactly `count` tokens."""
    return "".join(" " + rng.choice(words) for _ in range(count))


def build_data(sizes: Sizes, tokenizer, words: list[str], rng: random.Random) -> dict:
    """Rows whose prompt + response + EOS is exactly `sizes.seq_tokens` tokens."""
    prompts = [arithmetic(rng) for _ in range(8 * sizes.ppo_prompts)]
    sft, preferences = [], []
    for rows in (sft, preferences):
        for _ in range(ROWS):
            prompt = "Q:" + exact_length_text(words, sizes.seq_tokens // 16, rng) + "?\nA:"
            room = sizes.seq_tokens - 1 - len(tokenizer(prompt, add_special_tokens=False).input_ids)
            texts = [exact_length_text(words, room, rng) for _ in range(2)]
            rows.append(
                {"prompt": prompt, "completion": texts[0]}
                if rows is sft
                else {"prompt": prompt, "chosen": texts[0], "rejected": texts[1]}
            )

    def lengths(rows: list[dict], key: str = "") -> list[int]:
        """Tokens of each row's prompt, or of its prompt + `key` + the EOS a trainer appends."""
        texts = [row["prompt"] + (row[key] if key else "") for row in rows]
        return [
            len(ids) + bool(key) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
        ]

    sequences = [lengths(sft, "completion"), lengths(preferences, "chosen")]
    sequences.append(lengths(preferences, "rejected"))
    if {n for column in sequences for n in column} != {sizes.seq_tokens}:
        raise SystemExit(f"a sequence is not {sizes.seq_tokens} tokens long")
    return {
        "prompts": prompts,
        "sft": sft,
        "preferences": preferences,
        "prompt_tokens": lengths(prompts),
        "sft_tokens": sequences[0],
        "preference_tokens": [a + b for a, b in zip(sequences[1], sequences[2])],
    }


def build_assets(out: Path, shape: ModelShape, sizes: Sizes) -> dict:
    """Write every asset into `out` (kept when its manifest already describes the same shape and
    sizes); returns the manifest."""
    manifest_path = out / "manifest.json"
    wanted = {"shape": dataclasses.asdict(shape), "sizes": dataclasses.asdict(sizes)}
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest[k] for k in wanted} == wanted:
            return manifest
    rng = random.Random(SEED)
    tokenizer, words = build_tokenizer(shape.vocab, rng)
    build_models(shape, tokenizer, out)
    data = build_data(sizes, tokenizer, words, rng)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name in ("prompts", "sft", "preferences"):
        rows = "".join(json.dumps(row, sort_keys=True) + "\n" for row in data.pop(name))
        (out / "data" / f"{name}.jsonl").write_text(rows)
    manifest = {**wanted, "parameters": shape.parameters(), **data}
    manifest_path.write_text(json.dumps(manifest))
    return manifest
