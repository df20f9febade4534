"""`report.html`: one self-contained page (plots embedded as PNG data) for a pipeline run.

Sections: the stage table and the evaluation table (the same rows as the terminal and
`summary.json`, passed in by the pipeline, which builds them), the reward-KL frontier across
methods, proxy and gold reward against KL for each RL run with the over-optimisation point
marked, training curves per stage, and the same held-out prompts answered by SFT and by each
method. A small script checks on load that every plot decoded and writes the count on the page
(`data-plots-loaded`), which the browser test reads.
"""

import base64
import html
import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.eval.overoptimisation import gold_peak, moving_average  # noqa: E402
from rlhfkit.eval.tables import sample_rows  # noqa: E402
from rlhfkit.runtime.metrics import read_metrics  # noqa: E402
from rlhfkit.runtime.provenance import start_line

# (stage directory, metrics to plot) for the training curves
CURVES = {
    "sft": ["loss", "eval_loss"],
    "rm": ["loss", "train_pair_accuracy", "eval_accuracy"],
    "ppo": ["proxy_reward", "gold_score", "kl_per_sequence", "value_loss"],
    "grpo": ["reward_mean", "gold_score", "kl_per_token", "response_length"],
    "dpo": ["loss", "accuracy", "margin", "eval_accuracy"],
    "raft": ["reward_mean", "kept_count", "loss", "response_length"],
}
# (stage, KL key, axis label, proxy key, proxy label) of each RL run's over-optimisation plot
OVEROPTIMISATION = [
    (
        "ppo",
        "kl_per_sequence",
        "KL to SFT per sequence (k1, training samples)",
        "proxy_reward",
        "proxy: reward model",
    ),
    (
        "grpo",
        "kl_per_token",
        "KL to SFT per token (k3, training samples)",
        "reward_mean",
        "proxy: training reward",
    ),
]
METHOD_COLOURS = {
    "sft": "#555555",
    "ppo": "#1f77b4",
    "dpo": "#d62728",
    "grpo": "#2ca02c",
    "raft": "#9467bd",
}

_CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('img.plot'), ok = 0;
  plots.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { ok += 1; } });
  document.body.setAttribute('data-plots-loaded', ok + '/' + plots.length);
  if (ok < plots.length) {
    document.getElementById('check').textContent = (plots.length - ok) + ' plot(s) failed to load';
  }
});
"""


def png_data(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figure_html(title: str, png: str) -> str:
    return (
        f'<figure><img class="plot" alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
    )


def html_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def kl_gold_errorbar(ax, models: list[dict], **style) -> tuple[list[float], list[float]]:
    """Each model's sampled gold score against its KL per sequence (k1), both with their 95%
    intervals, drawn on `ax` with matplotlib's `errorbar` `style`; returns the points (xs, ys).
    An absent interval (None bounds: fewer than two prompts) draws no bar."""
    xs = [m["kl_k1_per_sequence"] for m in models]
    ys = [m["gold_sampled"] for m in models]

    def spread(points: list[float], key: str) -> list[list[float]]:
        # max(0, ...): an interval of equal values can miss its mean by a rounding error, and
        # matplotlib refuses a negative error bar
        bounds = [(m[f"{key}_low"], m[f"{key}_high"]) for m in models]
        bounds = [(v, v) if low is None else (low, high) for v, (low, high) in zip(points, bounds)]
        return [
            [max(0.0, v - low) for v, (low, _) in zip(points, bounds)],
            [max(0.0, high - v) for v, (_, high) in zip(points, bounds)],
        ]

    ax.errorbar(
        xs, ys, xerr=spread(xs, "kl_k1_per_sequence"), yerr=spread(ys, "gold_sampled"), **style
    )
    return xs, ys


def frontier_plot(summary: dict, methods_by_task: dict[str, tuple[str, ...]]) -> str:
    """Gold score against KL to SFT for every method, one panel per task (the DPO paper's
    reward-KL frontier): up and to the left is better."""
    fig, axes = plt.subplots(1, len(methods_by_task), figsize=(10, 3.8))
    for ax, (task, methods) in zip(axes, methods_by_task.items()):
        for method in methods:
            kl_gold_errorbar(
                ax,
                [summary["eval"][task][method]],
                fmt="o",
                color=METHOD_COLOURS.get(method),
                capsize=3,
                label=method,
            )
        ax.set_xlabel("KL to SFT per sequence (k1, nats, held-out samples)")
        ax.set_ylabel(
            "gold score (sampled, T = 1)" if task == "advice" else "accuracy (sampled, T = 1)"
        )
        ax.set_title(task)
        ax.legend()
    return png_data(fig)


def overoptimisation_plot(
    rows: list[dict], kl_key: str, kl_label: str, proxy_key: str, proxy_label: str
) -> str:
    """Proxy and gold reward of the training samples against KL, the gold peak marked when the
    gold score turns down while the proxy keeps rising."""
    rows = [
        r
        for r in rows
        if r.get(kl_key) is not None
        and r.get(proxy_key) is not None
        and r.get("gold_score") is not None
    ]
    # per-step values are noisy (KL included): each series is a 3-step trailing mean, as in
    # gold_peak
    kl = moving_average([r[kl_key] for r in rows], 3)
    proxy, gold = [r[proxy_key] for r in rows], [r["gold_score"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(
        kl,
        moving_average(proxy, 3),
        "o-",
        color="#1f77b4",
        label=proxy_label,
        markersize=3,
        linewidth=0.8,
    )
    ax.set_xlabel(kl_label + ", 3-step mean")
    ax.set_ylabel(proxy_label, color="#1f77b4")
    gold_ax = ax.twinx()
    gold_ax.plot(
        kl,
        moving_average(gold, 3),
        "s-",
        color="#d62728",
        label="gold",
        markersize=3,
        linewidth=0.8,
    )
    gold_ax.set_ylabel("gold score", color="#d62728")
    peak = gold_peak(proxy, gold)
    if peak is not None:
        ax.axvline(kl[peak], color="black", linestyle="--")
        ax.annotate(
            "gold peaks, proxy still rising", (kl[peak], max(moving_average(proxy, 3))), fontsize=8
        )
    ax.set_title(
        "no over-optimisation in this run" if peak is None else "over-optimisation: gold turns down"
    )
    return png_data(fig)


def training_curves(stage: str, rows: list[dict], keys: list[str]) -> str:
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(
        1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 2.6), squeeze=False
    )
    for ax, key in zip(axes[0], keys):
        points = [
            (r["step"], r[key])
            for r in rows
            if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
        ]
        ax.plot(*zip(*points), "o-" if len(points) < 20 else "-", markersize=3)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle(stage)
    return png_data(fig)


def samples_section(side_by_side: dict[str, list[dict]]) -> str:
    """Greedy answers side by side (`tables.sample_rows`), a table per task."""
    return "".join(
        f"<h3>{html.escape(task)}</h3>" + html_table(*sample_rows(items))
        for task, items in side_by_side.items()
    )


def made_by_html(started: dict | None) -> str:
    """The line under a report's title: the command, code and machine that made it."""
    if started is None:
        return ""
    return (
        f"<p class='made-by'>{html.escape(start_line(started))}<br>"
        f"<code>{html.escape(started['command'])}</code></p>"
    )


def write_report(
    root: Path,
    summary: dict,
    side_by_side: dict[str, list[dict]],
    *,
    stage_rows: list[list[str]],
    eval_tables: dict[str, tuple[list[str], list[list[str]]]],
    methods_by_task: dict[str, tuple[str, ...]],
) -> Path:
    """Write `root/report.html` from the run's summary, its tables (the stage rows, and the
    evaluation's (columns, rows) per task), the methods evaluated on each task, and the stages'
    metrics files."""
    root = Path(root)
    logs = {
        stage: read_metrics(root / stage / "metrics.jsonl")
        for stage in CURVES
        if (root / stage / "metrics.jsonl").is_file()
    }
    over = [
        figure_html(
            f"{stage}: {proxy_label} and gold score against KL",
            overoptimisation_plot(logs[stage], kl_key, kl_label, proxy_key, proxy_label),
        )
        for stage, kl_key, kl_label, proxy_key, proxy_label in OVEROPTIMISATION
        if stage in logs
    ]
    curves = [
        figure_html(f"{stage} training curves", training_curves(stage, logs[stage], keys))
        for stage, keys in CURVES.items()
        if stage in logs
    ]
    body = "".join(
        [
            f"<h1>rlhfkit pipeline: {html.escape(str(root))}</h1>",
            made_by_html(summary.get("started")),
            "<p id='check'></p>",
            "<h2>Stages</h2>",
            html_table(["stage", "result", "yardstick", "wall time"], stage_rows),
            "<h2>Held-out evaluation</h2>"
            "<p>Gold = advice's hidden annotator, arith's right final answer; win rates count "
            "ties as half, with 95% Wilson intervals (sampled: the answers to one prompt "
            "counted as correlated); KL to the SFT model on the policy's own samples (T = 1), "
            "estimators k1 and k3; repetition = share of repeated word 4-grams; proxy = the "
            "reward model.</p>",
            *(
                f"<h3>{task}</h3>" + html_table(columns, rows)
                for task, (columns, rows) in eval_tables.items()
            ),
            "<h2>Reward-KL frontier</h2>",
            figure_html(
                "gold score against KL to SFT, every method",
                frontier_plot(summary, methods_by_task),
            ),
            "<h2>Over-optimisation</h2>",
            *over,
            "<h2>Training curves</h2>",
            *curves,
            "<h2>Side by side (greedy answers to the same held-out prompts)</h2>",
            samples_section(side_by_side),
        ]
    )
    path = root / "report.html"
    path.write_text(html_page(body), encoding="utf-8")
    return path


def html_page(body: str) -> str:
    """A whole self-contained page around `body`, with the script that counts decoded plots."""
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1400px}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top;"
        "white-space:pre-wrap}"
        "th{background:#f0f0f0}figure{display:inline-block;margin:0.5em}#check{color:#b00}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>rlhfkit report</title>"
        f"<style>{style}</style>"
        f"</head><body>{body}<script>{_CHECK_SCRIPT}</script></body></html>"
    )
