"""`rlhfkit eval`'s `report.md` and self-contained `report.html`.

Both hold the table the command prints (`tables.metric_table`: every model beside the baseline),
the settings that decide what the numbers mean, the reward model's held-out pair accuracy when
measured, gold score against KL per model when there is a reference, and the greedy answers of
every model to the first few distinct held-out prompts. The plot is also written as
`gold_vs_kl.png`, which `report.md` shows.
"""

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402

from rlhfkit.data.conversation import conversation_text  # noqa: E402
from rlhfkit.data.formats import PromptExample  # noqa: E402
from rlhfkit.eval.model_eval import ModelEval  # noqa: E402
from rlhfkit.eval.report import (  # noqa: E402
    figure_html,
    html_page,
    html_table,
    kl_gold_errorbar,
    png_data,
    samples_section,
)
from rlhfkit.eval.tables import markdown_table, metric_table, sample_rows, short_names  # noqa: E402

REPORT_PROMPTS = 4
"""Distinct held-out prompts whose greedy answers the report shows side by side."""
PLOT_FILE = "gold_vs_kl.png"
NOTE = (
    "Gold = the task's annotator, or the reward source named by `judge`; the win rates against "
    "the baseline are judged by `judge` (gold, the reward model, or an AI judge asked in both "
    "orders, whose verdicts that flip with the order are counted), ties as half, with 95% Wilson "
    "intervals (sampled: a prompt's answers counted as correlated); the other intervals are 95% "
    "bootstrap intervals, a prompt's answers drawn together; KL to the reference on each "
    "model's own samples (T = 1), estimators k1 and k3; repeated 4-grams = share of repeated "
    "word 4-grams within an answer; proxy = the reward model's score."
)


def greedy_answers(result: ModelEval, shown: list[int]) -> list[dict]:
    """A model's greedy answers to prompts `shown` with their gold scores: all the report keeps
    of its samples."""
    return [{"response": result.greedy.texts[i][0], "gold": result.greedy_scores[i]} for i in shown]


def side_by_side(
    prompts: list[PromptExample], shown: list[int], answers: dict[str, list[dict]]
) -> list[dict]:
    """`{"prompt", model: {"response", "gold"}}` per shown prompt (`tables.sample_rows`' shape)."""
    return [
        {"prompt": conversation_text(prompts[i].prompt), **{m: a[n] for m, a in answers.items()}}
        for n, i in enumerate(shown)
    ]


def gold_kl_plot(models: dict[str, dict], baseline: str) -> str:
    """Sampled gold score against KL to the reference, one point per model with both intervals
    (PNG, base64): how much score each model bought with how much divergence."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, m in models.items():
        kl_gold_errorbar(
            ax, [m], fmt="s" if name == baseline else "o", capsize=3, label=name, markersize=5
        )
    ax.set_xlabel("KL to the reference per sequence (k1, nats, held-out samples at T = 1)")
    ax.set_ylabel("gold score (sampled, T = 1)")
    ax.set_title("gold score against KL (up and to the left is better)", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    return png_data(fig)


def rm_rows(rm: dict) -> list[list[str]]:
    """The reward model's held-out pair accuracy (`run_eval.reward_model_accuracy`) as a row."""
    accuracy = f"{rm['accuracy']:.1%} [{rm['accuracy_low']:.1%}, {rm['accuracy_high']:.1%}]"
    return [[rm["heldout_pairs"], accuracy, str(rm["pairs"])]]


def write_eval_report(
    root: Path,
    result: dict,
    *,
    title: str,
    settings: list[list[str]],
    side_by_side: list[dict],
) -> Path:
    """Write `report.md`, `report.html` (and `gold_vs_kl.png` when any model has a KL) under
    `root` from `run_eval`'s result, the (setting, value) rows and the greedy answers side by
    side (keyed by model path); returns the path of `report.html`."""
    root = Path(root)
    labels = dict(zip(result["models"], short_names(list(result["models"]))))
    models = {labels[path]: m for path, m in result["models"].items()}
    samples = [{labels.get(k, k): v for k, v in item.items()} for item in side_by_side]
    tables = {
        "Settings": (["setting", "value"], settings),
        "Every model against the baseline": metric_table(models),
    }
    if "reward_model" in result:
        tables["Reward model on held-out pairs"] = (
            ["held-out pairs", "accuracy [95%]", "pairs"],
            rm_rows(result["reward_model"]),
        )
    with_kl = {name: m for name, m in models.items() if "kl_k1_per_sequence" in m}
    png = gold_kl_plot(with_kl, labels.get(result["baseline"], "")) if with_kl else None
    if png is not None:
        (root / PLOT_FILE).write_bytes(base64.b64decode(png))
    # report.md: the same sections as tables; the plot as the file beside it
    markdown = [f"# rlhfkit eval: {title}\n\n{NOTE}\n"]
    markdown += [f"## {name}\n\n{markdown_table(*table)}\n" for name, table in tables.items()]
    if png is not None:
        markdown.append(f"## Gold score against KL\n\n![gold score against KL]({PLOT_FILE})\n")
    side_title = "Side by side (greedy answers to the first distinct held-out prompts)"
    markdown.append(f"## {side_title}\n\n{markdown_table(*sample_rows(samples))}\n")
    (root / "report.md").write_text("\n".join(markdown), encoding="utf-8")
    body = [f"<h1>rlhfkit eval: {html.escape(title)}</h1><p id='check'></p>"]
    body += [f"<h2>{name}</h2>" + html_table(*table) for name, table in tables.items()]
    body.append(f"<p>{html.escape(NOTE)}</p>")
    if png is not None:
        body.append("<h2>Gold score against KL</h2>" + figure_html("gold score against KL", png))
    body.append(f"<h2>{side_title}</h2>" + samples_section({"": samples}))
    path = root / "report.html"
    path.write_text(html_page("".join(body)), encoding="utf-8")
    return path
