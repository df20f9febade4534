"""Training data for a judge of the project's own: ranked pairs (human-style labels) turned
into comparison prompts whose completion is the verdict.

Each pair is written in both orders, the chosen reply once as A and once as B, so the labels
are balanced between the two answers and the judge cannot score well by preferring a position.
"""

import random

from rlhfkit.feedback.judge import ANSWER_A, ANSWER_B, judge_prompt


def judge_sft_rows(pairs: list[dict], rng: random.Random) -> list[dict]:
    """SFT rows `{"prompt", "completion"}` from preference rows `{"prompt", "chosen", "rejected"}`.

    Returns:
        2 * len(pairs) rows, shuffled with `rng`: the chosen reply shown as A (completion " A")
        and shown as B (completion " B").
    """
    rows = []
    for pair in pairs:
        prompt, chosen, rejected = pair["prompt"], pair["chosen"], pair["rejected"]
        rows.append({"prompt": judge_prompt(prompt, chosen, rejected), "completion": ANSWER_A})
        rows.append({"prompt": judge_prompt(prompt, rejected, chosen), "completion": ANSWER_B})
    rng.shuffle(rows)
    return rows
