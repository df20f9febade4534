"""Does a model need its BOS token? The loss on the same text tokens with and without a BOS in
front, through plain transformers (teacher-forced), on a few plain-text passages.

    python scripts/bos_check.py MODEL_DIR [--text "..."]...

Prints whether the tokenizer adds a BOS itself, nats/token over the passages' tokens after
the first (the first has no prediction without a BOS, so both sides score the same tokens), and
the greedy continuation of each passage's opening (its first half) with and without a BOS.
"""

import argparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

PASSAGES = [
    "The film opens on a rainy night in Lisbon, where a retired teacher finds a letter addressed "
    "to her late husband.",
    "To keep basil alive, water it when the top of the soil is dry and give it six hours of sun "
    "a day.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the "
    "leaves of plants.",
    "Q: Zoe has 55 shells and gives away 49. How many shells are left?\nA: 55 - 49 = 6. The "
    "answer is 6.",
]


def nats_per_token(model, token_lists: list[list[int]], skip: int) -> float:
    """Mean negative log-likelihood of each list's tokens after its first `skip` + 1."""
    total, count = 0.0, 0
    for ids in token_lists:
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, -1).gather(-1, x[0, 1:, None])[:, 0]
        total -= logprobs[skip:].sum().item()
        count += len(logprobs) - skip
    return total / count


def greedy_continuation(model, tokenizer, ids: list[int], new_tokens: int) -> str:
    """The model's greedy continuation of `ids`, decoded."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--text", action="append", help="a passage (default: four built in)")
    parser.add_argument("--new-tokens", type=int, default=24, help="greedy tokens per sample")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    texts = args.text or PASSAGES
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    adds = tokenizer("x")["input_ids"] != tokenizer("x", add_special_tokens=False)["input_ids"]
    print(
        f"BOS token {tokenizer.bos_token!r} (id {tokenizer.bos_token_id}); "
        f"the tokenizer adds it: {adds}"
    )
    print(f"without BOS: {nats_per_token(model, plain, 0):.3f} nats/token")
    if tokenizer.bos_token_id is not None:
        with_bos = [[tokenizer.bos_token_id, *ids] for ids in plain]
        print(f"with BOS:    {nats_per_token(model, with_bos, 1):.3f} nats/token")
    for ids in plain:
        opening = ids[: len(ids) // 2]
        print(f"\nopening: {tokenizer.decode(opening)!r}")
        sides = {"without BOS": opening}
        if tokenizer.bos_token_id is not None:
            sides["with BOS"] = [tokenizer.bos_token_id, *opening]
        for name, prompt in sides.items():
            text = greedy_continuation(model, tokenizer, prompt, args.new_tokens)
            print(f"  {name:<11}: {text!r}")


if __name__ == "__main__":
    main()
