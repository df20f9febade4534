"""The main job's tables, built from its summary alone, so the terminal, the HTML report and
`summary.json` always show the same numbers."""

from rlhfkit.eval.tables import largest_k, metric_table, rate

ADVICE_METHODS = ("sft", "ppo", "dpo")
ARITH_METHODS = ("sft", "grpo", "raft")


def stage_rows(s: dict) -> list[list[str]]:
    """(stage, result, yardstick, wall time) for every stage of the job."""
    secs = {name: f"{v['seconds']:.0f} s" for name, v in s["stages"].items()}
    advice, arith = s["eval"]["advice"], s["eval"]["arith"]
    ppo, dpo, grpo, raft = advice["ppo"], advice["dpo"], arith["grpo"], arith["raft"]
    sft_arith, sft_advice = arith["sft"], advice["sft"]
    return [
        [
            "data + model",
            "tiny Llama + BPE tokenizer",
            "",
            f"{s['stages']['data']['seconds'] + s['stages']['model']['seconds']:.0f} s",
        ],
        [
            "sft",
            f"loss {s['sft']['first_loss']:.3f} -> {s['sft']['last_loss']:.3f}",
            f"held-out loss {s['sft']['eval_loss']:.3f}",
            secs["sft"],
        ],
        [
            "collect",
            f"{s['collect']['rankings']} rankings, {s['collect']['pairs']} pairs",
            f"annotator T {s['collect']['temperature']:.2f}",
            secs["collect"],
        ],
        [
            "reward model",
            f"held-out accuracy {s['rm']['heldout_accuracy']:.1%}",
            f"agreement {s['collect']['agreement']:.1%}, "
            f"Bayes limit {s['collect']['bayes_limit']:.1%}",
            secs["reward model"],
        ],
        [
            "ppo on advice",
            f"gold win rate vs SFT {rate(ppo, 'win_rate_greedy')} greedy, "
            f"{rate(ppo, 'win_rate_sampled')} sampled",
            f"KL {ppo['kl_k1_per_sequence']:.2f} nats; "
            f"proxy {sft_advice['proxy_sampled']:.2f} -> {ppo['proxy_sampled']:.2f}, "
            f"gold {sft_advice['gold_sampled']:.2f} -> {ppo['gold_sampled']:.2f}",
            secs["ppo"],
        ],
        [
            "grpo on arith",
            f"accuracy {sft_arith['greedy_accuracy']:.1%} -> {grpo['greedy_accuracy']:.1%}",
            f"KL {grpo['kl_k1_per_sequence']:.2f}; {_passk(sft_arith)} -> {_passk(grpo)}",
            secs["grpo"],
        ],
        [
            f"dpo on advice ({s['dpo']['loss']})",
            f"gold win rate vs SFT {rate(dpo, 'win_rate_greedy')} greedy, "
            f"{rate(dpo, 'win_rate_sampled')} sampled",
            f"KL {dpo['kl_k1_per_sequence']:.2f}; "
            f"held-out preference accuracy {s['dpo']['heldout_accuracy']:.1%}",
            secs["dpo"],
        ],
        [
            "raft on arith",
            f"accuracy {sft_arith['greedy_accuracy']:.1%} -> {raft['greedy_accuracy']:.1%}",
            f"KL {raft['kl_k1_per_sequence']:.2f}; "
            f"{s['raft']['kept']} samples kept in {s['raft']['rounds']} rounds",
            secs["raft"],
        ],
        [
            "evaluate",
            "SFT, PPO, DPO on advice; SFT, GRPO, RAFT on arith",
            "one set of samples per model",
            secs["evaluate"],
        ],
    ]


def _passk(m: dict) -> str:
    top = largest_k(m)
    return f"pass@{top} {m[f'pass@{top}']:.0%}, maj@{top} {m[f'maj@{top}']:.0%}"


def eval_tables(s: dict) -> dict[str, tuple[list[str], list[list[str]]]]:
    """The pipeline's evaluation, one table per task."""
    return {
        task: metric_table({m: s["eval"][task][m] for m in methods})
        for task, methods in (("advice", ADVICE_METHODS), ("arith", ARITH_METHODS))
    }


# what plays the gold judge of each task the pipeline evaluates (the tables' titles)
GOLD = {"advice": "the hidden annotator", "arith": "a right final answer"}


def collection_line(collect: dict) -> str:
    """The collection stage's numbers in one line."""
    return (
        f"{collect['rankings']} rankings ({collect['pairs']} pairs) by the simulated annotator at "
        f"T = {collect['temperature']:.3f}: agreement {collect['agreement']:.1%} between "
        f"annotators (Bayes limit {collect['bayes_limit']:.1%})"
    )
