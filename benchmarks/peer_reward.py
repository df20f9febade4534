"""The shared benchmark's rule reward for its GRPO and RLOO workloads, as an rlhfkit reward function
(`reward=benchmarks/peer_reward.py:digits_and_answer`).

    reward = (characters of the response that are digits) / max(1, len(response))
             + 1 if the stripped response starts with the reference answer

on the decoded response with special tokens removed, as the reference harness computes it.
"""


def digits_and_answer(prompts, responses, *, answer, **columns) -> list[float]:
    return [
        sum(ch.isdigit() for ch in text) / max(1, len(text))
        + (1.0 if text.strip().startswith(ref) else 0.0)
        for text, ref in zip(responses, answer)
    ]
