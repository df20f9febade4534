"""The reward-KL frontier's outputs: the figure (`frontier.png`, `frontier.svg`), the tables,
`summary.json`, `report.md` and the self-contained `report.html`.

The figure is the DPO paper's (Rafailov et al. 2023, figure 2, left): each evaluated
checkpoint is a point at (KL to the SFT model, gold reward), both estimated on the same
held-out samples with bootstrap 95% intervals; the checkpoints of one run are joined in step
order, starting from SFT. Up and to the left is better: more reward for less divergence.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to files and memory
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.eval.report import (  # noqa: E402
    figure_html,
    html_page,
    html_table,
    kl_gold_errorbar,
    made_by_html,
    png_data,
    samples_section,
)
from rlhfkit.eval.tables import (  # noqa: E402
    interval,
    markdown_table,
    metric_table,
    rate,
    sample_rows,
)
from rlhfkit.runtime.provenance import start_line  # noqa: E402

# a colour map per method; the runs of one method take shades of it
METHOD_MAPS = {"ppo": "Blues", "grpo": "Greens", "dpo": "Reds"}
KL_LABEL = "KL(policy || SFT) per sequence, nats (k1, held-out samples at T = 1)"


@dataclass(frozen=True)
class Point:
    """One evaluated model: SFT, or a checkpoint of a run."""

    run: str
    method: str
    label: str
    step: int
    metrics: dict = field(repr=False)


def _colours(points: list[Point]) -> dict[str, tuple]:
    runs: dict[str, list[str]] = {}
    for p in points:
        if p.method in METHOD_MAPS and p.run not in runs.setdefault(p.method, []):
            runs[p.method].append(p.run)
    colours = {}
    for method, names in runs.items():
        cmap = plt.get_cmap(METHOD_MAPS[method])
        for i, name in enumerate(names):
            colours[name] = cmap(0.55 + 0.4 * i / max(1, len(names) - 1))
    return colours


def frontier_figure(points: list[Point], gold_label: str):
    """Gold reward against KL to SFT, every checkpoint of every run with both intervals."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sft = next(p for p in points if p.run == "sft")
    colours = _colours(points)
    for run, colour in colours.items():
        series = [sft] + sorted((p for p in points if p.run == run), key=lambda p: p.step)
        xs, ys = kl_gold_errorbar(
            ax,
            [p.metrics for p in series],
            fmt="o-",
            color=colour,
            ecolor=(*colour[:3], 0.35),
            capsize=2,
            markersize=4,
            linewidth=1,
            label=series[-1].label,
        )
        for x, y, p in zip(xs[1:], ys[1:], series[1:]):
            ax.annotate(str(p.step), (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    m = sft.metrics
    kl_gold_errorbar(ax, [m], fmt="s", color="black", capsize=2, label="SFT")
    ax.axhline(m["gold_sampled"], color="black", linewidth=0.5, linestyle=":")
    ax.set_xlabel(KL_LABEL, fontsize=8)
    ax.set_ylabel(gold_label, fontsize=8)
    ax.set_title("reward-KL frontier (numbers: training steps)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return fig


POINT_COLUMNS = [
    "run",
    "step",
    "KL/seq [95%]",
    "gold, sampled [95%]",
    "win vs SFT, sampled",
    "win vs SFT, greedy",
    "proxy (RM)",
    "positive repeats",
    "distinct-1",
    "words",
]


def point_rows(points: list[Point]) -> list[list[str]]:
    """One row per evaluated model (`POINT_COLUMNS`); the hacking signs are of sampled answers."""
    rows = []
    for p in points:
        m = p.metrics
        rows.append(
            [
                p.label,
                str(p.step),
                interval(m, "kl_k1_per_sequence", 2),
                interval(m, "gold_sampled", 3),
                rate(m, "win_rate_sampled") if "win_rate_sampled" in m else "",
                rate(m, "win_rate_greedy") if "win_rate_greedy" in m else "",
                f"{m['proxy_sampled']:.2f}" if "proxy_sampled" in m else "",
                # the sentiment task's own sign; other tasks have none
                f"{m['sampled_positive_repeats']:.3f}" if "sampled_positive_repeats" in m else "",
                f"{m['sampled_distinct_1']:.3f}",
                f"{m['sampled_words']:.1f}",
            ]
        )
    return rows


def stage_rows(summary: dict) -> list[list[str]]:
    """(stage, result, wall time) of every stage."""
    secs = {name: f"{v['seconds']:.0f} s" for name, v in summary["stages"].items()}
    sft, collect, rm = summary["sft"], summary["collect"], summary["rm"]
    rows = [
        ["data", "demonstrations and held-out prompts", secs["data"]],
        [
            "sft",
            f"{sft['steps']} steps, loss {sft['first_loss']:.3f} -> {sft['last_loss']:.3f}"
            + (f", held-out {sft['eval_loss']:.3f}" if sft["eval_loss"] is not None else ""),
            secs["sft"],
        ],
        [
            "collect",
            f"{collect['rankings']} rankings ({collect['pairs']} pairs), "
            f"{collect['heldout_rankings']} held out; annotator agreement "
            f"{collect['agreement']:.1%}, Bayes limit {collect['bayes_limit']:.1%}",
            secs["collect"],
        ],
        ["reward model", f"held-out accuracy {rm['heldout_accuracy']:.1%}", secs["reward model"]],
    ]
    for name, run in summary["runs"].items():
        rows.append([run["label"], f"{run['steps']} steps", secs[name]])
    rows.append(["evaluate", "SFT and every checkpoint, one set of samples each", secs["evaluate"]])
    rows.append(["total", "", f"{summary['seconds'] / 60:.1f} min"])
    return rows


def write_frontier_report(
    root: Path, summary: dict, points: list[Point], side_by_side: list[dict], *, title: str
) -> list[Path]:
    """Write the figure, `summary.json`, `report.md` and `report.html` under `root`."""
    root = Path(root)
    gold_label = "gold reward (sampled at T = 1, mean of held-out prompts)"
    fig = frontier_figure(points, gold_label)
    fig.savefig(root / "frontier.svg", bbox_inches="tight")
    fig.savefig(root / "frontier.png", dpi=120, bbox_inches="tight")
    png = png_data(fig)  # closes it
    finals = {}
    for p in points:  # the last point of each run is its final model
        finals[p.label] = p.metrics
    tables = {
        "Stages": (["stage", "result", "wall time"], stage_rows(summary)),
        "Every evaluated checkpoint": (POINT_COLUMNS, point_rows(points)),
        "Final models": metric_table(finals),
        "Side by side (greedy answers to held-out prompts)": sample_rows(side_by_side),
    }
    summary = {
        **summary,
        "points": [{"run": p.run, "label": p.label, "step": p.step, **p.metrics} for p in points],
        "samples": side_by_side,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=2))
    machine = summary["machine"]
    header = (
        f"# rlhfkit frontier: {title}\n\n"
        f"{machine['cpu']}, {machine['cpus']} CPUs, {machine['torch_threads']} torch threads; "
        f"load average {machine['load_average_start'][0]:.1f} at the start, "
        f"{machine['load_average_end'][0]:.1f} at the end; "
        f"wall time {summary['seconds'] / 60:.1f} min.\n"
    )
    started = summary.get("started")
    if started is not None:  # the command, code and machine behind the numbers
        header += f"\n{start_line(started)}: `{started['command']}`\n"
    markdown = [header, "![reward-KL frontier](frontier.png)\n"]
    markdown += [f"## {name}\n\n{markdown_table(*table)}\n" for name, table in tables.items()]
    (root / "report.md").write_text("\n".join(markdown))
    body = [
        f"<h1>rlhfkit frontier: {title}</h1><p id='check'></p><p>{header.split(chr(10))[2]}</p>",
        made_by_html(started),
        figure_html("gold reward against KL to SFT, every checkpoint", png),
    ]
    for name, (columns, rows) in list(tables.items())[:-1]:
        body.append(f"<h2>{name}</h2>" + html_table(columns, rows))
    body.append("<h2>Side by side (greedy answers)</h2>" + samples_section({"": side_by_side}))
    (root / "report.html").write_text(html_page("".join(body)), encoding="utf-8")
    return [
        root / name
        for name in ("frontier.png", "frontier.svg", "summary.json", "report.md", "report.html")
    ]
