"""Issue 20 end to end, through the command line as a user runs it: `rlhfkit sample` writes the
candidates, `rlhfkit label serve` (a subprocess) shows them in headless chromium where a person
ranks every item (by keyboard, by drag, with a tie), `rlhfkit label export` writes rankings and
pairs that hold exactly what was clicked, and `rlhfkit rm` and `rlhfkit dpo` train on them."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("starlette", reason="the labelling server needs the `label` extra")
pytest.importorskip("uvicorn", reason="the labelling server needs the `label` extra")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser tests need the playwright package (dev extra)"
)

from safetensors.torch import load_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from rlhfkit import cli  # noqa: E402
from rlhfkit.labelling.store import DEFAULTS, labels_wanted  # noqa: E402

from .server_link import wait_for_link  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LABELLER = "rosa"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium: `make browser` installs Debian's package where it can (root + apt)",
)


def serve(labels: Path) -> tuple[subprocess.Popen, str]:
    """`rlhfkit label serve LABELS --port 0` in a subprocess; returns it with the tokened link
    it printed."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "rlhfkit", "label", "serve", str(labels), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, wait_for_link(process)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    """Ctrl-C, as a user stops the server; returns its exit status and stderr. A server that
    does not stop within 30 s fails the test."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
        return process.returncode, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def wait_for_next_item(page, done: set[str]) -> str:
    """The id of the item on screen once it is none of `done`."""
    page.wait_for_function(
        "done => { const item = document.getElementById('item');"
        " return !item.hidden && item.dataset.itemId && !done.includes(item.dataset.itemId); }",
        arg=sorted(done),
        timeout=15000,
    )
    return page.get_attribute("#item", "data-item-id")


def arrangement(page) -> list[int]:
    """Response indices, top first, as the page shows them now."""
    indices = page.eval_on_selector_all(".response", "cards => cards.map(c => c.dataset.index)")
    return [int(index) for index in indices]


def places(page) -> list[str]:
    return page.eval_on_selector_all(".response .rank", "ranks => ranks.map(r => r.textContent)")


def rank_by_keyboard(page) -> list[list[int]]:
    """Move the top response one down with the arrow key and submit with Enter."""
    a = arrangement(page)
    page.locator(".response").nth(0).focus()
    page.keyboard.press("ArrowDown")
    assert arrangement(page) == [a[1], a[0], a[2]]
    page.keyboard.press("Enter")
    return [[a[1]], [a[0]], [a[2]]]


def rank_by_drag(page) -> list[list[int]]:
    """Drag the bottom response to the top and click submit."""
    a = arrangement(page)
    cards = page.locator(".response")
    cards.nth(2).drag_to(cards.nth(0))
    assert arrangement(page) == [a[2], a[0], a[1]]
    page.click("#submit")
    return [[a[2]], [a[0]], [a[1]]]


def rank_with_a_tie(page) -> list[list[int]]:
    """Tie the second response with the first (T) and click submit."""
    a = arrangement(page)
    page.locator(".response").nth(1).focus()
    page.keyboard.press("t")
    assert places(page) == ["1", "1", "2"]
    page.click("#submit")
    return [[a[0], a[1]], [a[2]]]


def label_every_item(link: str, items: dict[str, dict]) -> dict[str, list[list[int]]]:
    """Rank the three items in the page as a person would; returns each item's groups of
    response indices, best first (a group is a tie), as clicked."""
    clicked = {}
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(link)
            page.fill("#name", LABELLER)
            page.click("#login button")
            for rank in (rank_by_keyboard, rank_by_drag, rank_with_a_tie):
                item_id = wait_for_next_item(page, set(clicked))
                shown = page.eval_on_selector_all(
                    ".response .text", "texts => texts.map(t => t.textContent)"
                )
                assert sorted(shown) == sorted(items[item_id]["responses"])
                clicked[item_id] = rank(page)
            page.wait_for_selector("#finished", state="visible", timeout=15000)
            # an overlap item (by hash) waits for a second labeller's ranking: not done yet
            done = sum(labels_wanted(item_id, DEFAULTS) == 1 for item_id in items)
            assert page.text_content("#progress") == f"{done} of 3 done · you: 3"
        finally:
            browser.close()
    return clicked


def expected_ranking(row: dict, groups: list[list[int]]) -> dict:
    """The export's ranking row for `groups`: responses best first (a tie in sampled order),
    dense ranks, no flags."""
    order = [(rank, index) for rank, group in enumerate(groups) for index in sorted(group)]
    return {
        "prompt": row["prompt"],
        "responses": [row["responses"][index] for _, index in order],
        "ranks": [rank for rank, _ in order],
        "flags": [[] for _ in order],
        "item_id": row["item_id"],
        "labeller": LABELLER,
    }


def sample_candidates(model: Path, runs: Path) -> list[dict]:
    """`rlhfkit sample`: three advice prompts, three responses each; returns the rows."""
    cli.run(
        ["sample", f"model={model}", "task=advice", "num_prompts=3", "k=3"]
        + ["max_new_tokens=8", "progress=false", "--runs-dir", str(runs), "--name", "cands"]
    )
    rows = read_jsonl(runs / "cands" / "candidates.jsonl")
    weights = (model / "model.safetensors").read_bytes()
    digest = hashlib.sha256(b"model.safetensors\0" + weights).hexdigest()
    assert len(rows) == 3
    for row in rows:
        assert len(row["responses"]) == 3
        # identical responses ranked apart would be dropped in training: these all differ
        assert len(set(row["responses"])) == 3 and all(r.strip() for r in row["responses"])
        assert row["source"]["weights_sha256"] == digest
    return rows


def pairs_of(row: dict, groups: list[list[int]]) -> list[tuple[str, str, int]]:
    """(chosen, rejected, rank gap) for every two responses in different groups."""
    return [
        (row["responses"][i], row["responses"][j], later - earlier)
        for earlier, better in enumerate(groups)
        for later, worse in enumerate(groups)
        if earlier < later
        for i in better
        for j in worse
    ]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def train(command: str, model: Path, data: Path, runs: Path) -> Path:
    """`rlhfkit COMMAND` for two steps of two rows; returns its final model directory."""
    cli.run(
        [
            command,
            f"model={model}",
            f"train_data={data}",
            "max_steps=2",
            "batch_size=2",
            "eval_every=0",
            "save_every=0",
            "progress=false",
            "tensorboard=false",
            "--runs-dir",
            str(runs),
            "--name",
            command,
        ]
    )
    steps = [row["step"] for row in read_jsonl(runs / command / "metrics.jsonl") if "step" in row]
    assert max(steps) == 2
    return runs / command / "final"


def test_sample_label_in_the_browser_export_and_train_rm_and_dpo(tiny_model_dir, tmp_path, capsys):
    runs, labels = tmp_path / "runs", tmp_path / "labels"

    # step 1. sample three candidates for each of three prompts
    rows = sample_candidates(tiny_model_dir, runs)

    # step 2. a person ranks them all in the browser
    labels.mkdir()
    shutil.copy(runs / "cands" / "candidates.jsonl", labels / "candidates.jsonl")
    process, link = serve(labels)
    try:
        clicked = label_every_item(link, {row["item_id"]: row for row in rows})
    except BaseException:
        stop(process)
        raise
    # Ctrl-C is how the server is stopped: a normal end (status 0), no traceback
    assert stop(process) == (0, "")

    # step 3. export rankings and pairs: exactly what was clicked, in the candidates' order
    rankings, pairs = tmp_path / "rankings.jsonl", tmp_path / "pairs.jsonl"
    cli.run(["label", "export", str(labels), "--out", str(rankings)])
    cli.run(["label", "export", str(labels), "--format", "pairs", "--out", str(pairs)])
    exported = read_jsonl(rankings)
    assert all(row.pop("submitted_at") for row in exported)
    assert exported == [expected_ranking(row, clicked[row["item_id"]]) for row in rows]
    expected_pairs = sorted(pair for row in rows for pair in pairs_of(row, clicked[row["item_id"]]))
    assert len(expected_pairs) == 3 + 3 + 2  # two strict rankings and one with a tie
    assert (
        sorted((p["chosen"], p["rejected"], p["margin"]) for p in read_jsonl(pairs))
        == expected_pairs
    )

    # step 4. a reward model on the rankings, DPO on the pairs; both final models load
    capsys.readouterr()
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        train("rm", tiny_model_dir, rankings, runs)
    )
    assert f"{rankings}: 3 rows: 3 kept (0 truncated), 0 dropped" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    scores = reward_model(**tokenizer([rows[0]["prompt"]], return_tensors="pt")).logits
    assert scores.shape == (1, 1) and torch.isfinite(scores).all()

    policy_dir = train("dpo", tiny_model_dir, pairs, runs)
    assert f"{pairs}: 8 rows: 8 kept (0 truncated), 0 dropped" in capsys.readouterr().out
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    start = load_file(tiny_model_dir / "model.safetensors")
    trained = policy.state_dict()
    assert start.keys() <= trained.keys()
    assert any(not torch.equal(start[name], trained[name]) for name in start)
