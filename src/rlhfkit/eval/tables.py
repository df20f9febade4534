"""Tables of evaluation metrics, one column per model, written from the metrics dicts alone
(`model_eval.evaluate_model`), so every place that shows them shows the same numbers; and the
forms a table takes in the terminal and in `report.md`."""

from pathlib import Path

from rich.table import Table

NO_INTERVAL = "[-]"  # an interval that cannot be estimated, as a missing number reads "-"


def rate(metrics: dict, key: str) -> str:
    """A win rate with its 95% interval, e.g. `59% [52, 66]`."""
    return (
        f"{metrics[key]:.0%} "
        f"[{100 * metrics[key + '_low']:.0f}, {100 * metrics[key + '_high']:.0f}]"
    )


def fixed(value: float, digits: int = 3) -> str:
    """`value` with `digits` decimals, never "-0.000": a KL of -1e-7 (a model against itself,
    rounding) reads as 0.000."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def interval(m: dict, key: str, digits: int = 3) -> str:
    """A mean with its 95% interval, `digits` decimals each as `fixed` writes them."""
    return _with_bounds(m, key, lambda value: fixed(value, digits))


def _with_bounds(m: dict, key: str, write) -> str:
    """`m[key]` and its interval `[low, high]`, each written by `write`; `[-]` where the
    interval is absent (None bounds: fewer than two distinct prompts, nothing to estimate it)."""
    low, high = m[key + "_low"], m[key + "_high"]
    bounds = NO_INTERVAL if low is None or high is None else f"[{write(low)}, {write(high)}]"
    return f"{write(m[key])} {bounds}"


def score(value: float) -> str:
    """A judge's score: 3 decimals, or 3 significant digits where those would round a non-zero
    score to 0 (a judge may score in millionths; a KL of rounding noise keeps `fixed`)."""
    return f"{value:.3g}" if value and abs(value) < 5e-4 else fixed(value)


def _score_interval(m: dict, key: str) -> str:
    return _with_bounds(m, key, score)


# (row label, the key a model's metrics must hold for it, how to write it); one row each
EVAL_METRICS = [
    ("gold, greedy", "greedy_gold_score", lambda m: score(m["greedy_gold_score"])),
    ("gold, sampled [95%]", "gold_sampled", lambda m: _score_interval(m, "gold_sampled")),
    ("win rate, greedy [95%]", "win_rate_greedy", lambda m: rate(m, "win_rate_greedy")),
    ("win rate, sampled [95%]", "win_rate_sampled", lambda m: rate(m, "win_rate_sampled")),
    # an AI judge's verdicts that flip when the two answers swap places: near 1, its win
    # rates say little
    (
        "judge flips, greedy / sampled",
        "judge_flip_rate_greedy",
        lambda m: f"{m['judge_flip_rate_greedy']:.1%} / {m['judge_flip_rate_sampled']:.1%}",
    ),
    ("KL/sequence k1 [95%]", "kl_k1_per_sequence", lambda m: interval(m, "kl_k1_per_sequence")),
    (
        "KL/token k1 / k3",
        "kl_k1_per_token",
        lambda m: f"{fixed(m['kl_k1_per_token'], 4)} / {fixed(m['kl_k3_per_token'], 4)}",
    ),
    ("proxy (RM) [95%]", "proxy_sampled", lambda m: _score_interval(m, "proxy_sampled")),
    ("length (tokens)", "length_tokens", lambda m: f"{m['length_tokens']:.1f}"),
    ("repeated 4-grams", "repetition", lambda m: f"{m['repetition']:.3f}"),
    ("distinct-2", "distinct_2", lambda m: f"{m['distinct_2']:.3f}"),
    ("pass@1", "pass@1", lambda m: f"{m['pass@1']:.1%}"),
    ("pass@k", "pass@1", lambda m: f"{m[f'pass@{largest_k(m)}']:.1%}"),
    ("maj@k", "maj@1", lambda m: f"{m[f'maj@{largest_k(m)}']:.1%}"),
]


def largest_k(m: dict) -> int:
    """The largest k of a model's pass@k metrics (its samples per prompt)."""
    return max(int(key.split("@")[1]) for key in m if key.startswith("pass@"))


def metric_table(models: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """(columns = metric then one per model, one row per metric of `EVAL_METRICS` that some
    model has); a cell is empty where a model lacks the number (the baseline's win rate)."""
    names, rows = list(models), []
    for label, key, write in EVAL_METRICS:
        present = [key in models[name] for name in names]
        if any(present):
            if "@k" in label:  # name the k: that of the first model that has it
                k = largest_k(next(models[n] for n, ok in zip(names, present) if ok))
                if k == 1:
                    continue  # pass@1 and maj@1 are the pass@1 row's number
                label = label.replace("@k", f"@{k}")
            rows.append([label] + [write(models[n]) if ok else "" for n, ok in zip(names, present)])
    return ["metric", *names], rows


def rich_table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    """The terminal's form of a table."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    """The `report.md` form of a table (a cell's `|` escaped, its line breaks made spaces)."""

    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def sample_rows(side_by_side: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(columns, rows) of greedy answers side by side: one row per `{"prompt", model:
    {"response", "gold"}}` item, a column per model."""
    models = [k for k in side_by_side[0] if k != "prompt"] if side_by_side else []
    rows = [
        [item["prompt"]]
        + [f"{item[m]['response']}\n[gold {score(item[m]['gold'])}]" for m in models]
        for item in side_by_side
    ]
    return ["prompt", *models], rows


def short_names(paths: list[str]) -> list[str]:
    """Column names for model paths: the last two parts (`runs/ppo/final` -> `ppo/final`), or
    the whole paths where two would read alike."""
    short = ["/".join(Path(p).parts[-2:]) for p in paths]
    return short if len(set(short)) == len(short) else list(paths)
