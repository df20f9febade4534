"""`rlhfkit eval`'s report: the printed table, the settings, gold against KL and greedy answers
side by side, in `report.md` and `report.html` beside `eval.json`."""

import contextlib
import html
import io
import json
import random
import shutil

import pytest
import torch

from rlhfkit import cli
from rlhfkit.data.conversation import conversation_text
from rlhfkit.eval.eval_report import write_eval_report
from rlhfkit.eval.run_eval import EvalConfig
from rlhfkit.eval.tables import fixed, markdown_table, metric_table, rate, short_names
from rlhfkit.models.loading import load_causal_lm
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.registry import get_task


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory) -> tuple:
    """`rlhfkit eval` of a scaled copy of the tiny model against the tiny model on `arith`:
    (run directory, eval.json, what it printed)."""
    runs = tmp_path_factory.mktemp("eval_report")
    other = runs / "scaled" / "final"
    shutil.copytree(tiny_model_dir, other)
    model = load_causal_lm(other)
    with torch.no_grad():  # another policy: the same weights, a little larger
        for parameter in model.parameters():
            parameter.mul_(1.2)
    model.save_pretrained(other)
    args = [f"models=[{other}]", f"baseline={tiny_model_dir}", "task=arith", "num_prompts=6"]
    args += ["samples_per_prompt=2", "max_new_tokens=8", "--runs-dir", str(runs), "--name", "ev"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        cli.run(["eval", *args])
    root = runs / "ev"
    return root, json.loads((root / "eval.json").read_text()), printed.getvalue()


def test_eval_writes_both_reports_and_prints_where(report):
    root, _, printed = report
    assert f"report: {(root / 'report.html').resolve()}" in printed
    for name in ("report.md", "report.html", "gold_vs_kl.png"):
        assert (root / name).stat().st_size > 0, name


def test_the_html_report_holds_every_model_and_the_numbers_of_eval_json(report):
    root, result, _ = report
    page = (root / "report.html").read_text()
    (baseline, theirs), (other, ours) = result["models"].items()  # the baseline first
    assert baseline == result["baseline"] and short_names([baseline, other])[1] == "scaled/final"
    for name in short_names([baseline, other]):
        assert f"<th>{html.escape(name)}</th>" in page
    for m in (theirs, ours):
        assert f"<td>{m['greedy_gold_score']:.3f}</td>" in page
        assert f"{m['gold_sampled']:.3f} [{m['gold_sampled_low']:.3f}," in page
        assert (
            f"<td>{fixed(m['kl_k1_per_token'], 4)} / {fixed(m['kl_k3_per_token'], 4)}</td>" in page
        )
        assert f"<td>{m['pass@2']:.1%}</td>" in page
    assert f"<td>{rate(ours, 'win_rate_sampled')}</td>" in page
    assert f"<td>{rate(ours, 'win_rate_greedy')}</td>" in page
    # the settings that decide the numbers, and the plot, embedded
    settings = (["task", "arith"], ["samples_per_prompt", "2 at T = 1"], ["seed", "0"])
    for row in (*settings, ["batch_size", str(EvalConfig.batch_size)], ["precision", "fp32"]):
        assert f"<td>{row[0]}</td><td>{row[1]}" in page
    assert page.count('<img class="plot"') == 1 and "data:image/png;base64," in page


def test_the_side_by_side_answers_are_the_first_distinct_held_out_prompts(report):
    root, result, _ = report
    page, md = (root / "report.html").read_text(), (root / "report.md").read_text()
    rng = random.Random(derive_seed(0, SeedStream.EVAL_PROMPTS))
    prompts = [conversation_text(p.prompt) for p in get_task("arith").prompts(6, rng)]
    shown = list(dict.fromkeys(prompts))[:4]
    side = [line for line in md.split("## Side by side")[1].splitlines() if line.startswith("|")]
    assert side[0] == "| prompt | " + " | ".join(short_names(list(result["models"]))) + " |"
    rows = side[2:]  # after the head and its rule
    assert [row.split(" | ")[0] for row in rows] == [f"| {p}".replace("\n", " ") for p in shown]
    assert all(row.count("[gold ") == len(result["models"]) for row in rows)
    assert all(f"<td>{html.escape(p)}</td>" in page for p in shown)


def test_the_markdown_report_holds_the_printed_table(report):
    root, result, _ = report
    md = (root / "report.md").read_text()
    names = short_names(list(result["models"]))
    models = {n: result["models"][p] for n, p in zip(names, result["models"])}
    table = markdown_table(*metric_table(models))
    assert table in md and "| win rate, sampled [95%] |  | " in table  # the baseline's is empty
    assert "![gold score against KL](gold_vs_kl.png)" in md


def test_without_a_reference_there_is_no_plot_and_the_reward_model_is_listed(tmp_path):
    metrics = {"greedy_gold_score": 0.25, "gold_sampled": 0.5, "length_tokens": 3.0}
    metrics |= {"gold_sampled_low": 0.4, "gold_sampled_high": 0.6}
    result = {
        "baseline": "",
        "models": {"runs/a/final": metrics},
        "reward_model": {
            "heldout_pairs": "pairs.jsonl",
            "accuracy": 0.75,
            "accuracy_low": 0.5,
            "accuracy_high": 0.9,
            "pairs": 8,
        },
    }
    page = write_eval_report(
        tmp_path, result, title="t", settings=[["seed", "3"]], side_by_side=[]
    ).read_text()
    assert "<th>a/final</th>" in page and "<td>0.500 [0.400, 0.600]</td>" in page
    assert "<td>pairs.jsonl</td><td>75.0% [50.0%, 90.0%]</td><td>8</td>" in page
    assert '<img class="plot"' not in page and not (tmp_path / "gold_vs_kl.png").exists()
    assert "| pairs.jsonl | 75.0% [50.0%, 90.0%] | 8 |" in (tmp_path / "report.md").read_text()
