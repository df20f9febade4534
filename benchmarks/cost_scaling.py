r"""How the cost of one rlhfkit GRPO step grows with completion length and with model width.

The shared benchmark's GRPO workload (`peer_workloads.py`: 8 prompts x 8 samples, T = 1,
beta 0.04 with the k3 KL, lr 1e-5, prompts in file order, the rule reward of `peer_reward.py`),
at five points:

    completion length 32, 128, 512 new tokens   (width 256)
    model width (hidden size) 256, 512, 1024     (32 new tokens)

Each width is the peer policy's architecture (4 layers, head dim 64, vocab 2048, tied
embeddings) with hidden size W, W // 64 heads, intermediate round(688 * W / 256) and 1024
positions, randomly initialised with seed 0 and cached under --work. Width 256 is built the
same way, so every point uses the same recipe; the random policy rarely samples EOS, so
completions run to nearly their full length.

Each point runs in its own process (peak RSS is per process) with --threads threads: --warmup
untimed steps, then --steps timed ones. Step durations are the time between consecutive metrics
lines, as in `peer_workloads.py`, so they include the trainer's per-step logging.

    python ../shared/peer/make_assets.py /tmp/peer-assets
    python benchmarks/cost_scaling.py --assets /tmp/peer-assets --out-dir runs/cost_scaling
    python benchmarks/cost_scaling.py --assets /tmp/peer-assets --out-dir /tmp/cs \
        --points quick --threads 1

Writes OUT_DIR/grpo_cost_scaling.jsonl (one line per point, with the per-phase seconds),
OUT_DIR/grpo_cost_scaling.md (the table, also printed) and OUT_DIR/grpo_cost_scaling.png.

FLOP columns (T = prompt + completion tokens per step, as measured; peer README):

    N            = layers * (4 h^2 + 3 h i) + vocab * h      weights entering a matmul per token
    matmul       = 10 N T   (2NT generation + 6NT training forward/backward + 2NT reference forward)
    + attention  = matmul + 5 * layers * 4 h * (sum over sequences and positions of the
                   context length)

The attention term counts the query-key scores and the weighted sum of values, 2 h c FLOPs
each for a token seeing c positions (causal, so c = 1 ... L for a sequence of length L), once
for generation, once for the reference forward and three times for the training forward and
backward; all sequences of a step are taken at the step's mean length. Both estimates ignore
padding, recomputation and the prompt sharing of the reference forward. "time / FLOP-prop." is
(t / t_base) / (F / F_base) against the base point (width 256, 32 tokens; the smallest in quick
mode): 1 means the step cost grew exactly as the FLOP estimate did, above 1 means it grew faster.
"""

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# the script's own folder is on sys.path when it runs, so the sibling benchmark imports directly
from peer_workloads import generation_config, generation_metrics

from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir

MAX_POSITIONS = 1024  # 11 prompt + 512 new tokens must fit
# (lengths at the base width, widths at the base length, timed steps or None for --steps)
POINT_SETS = {
    "all": ((32, 128, 512), (256, 512, 1024), None),
    "quick": ((8, 16), (64, 128), 1),  # a smoke test: tiny sizes, one timed step
}
# generation_metrics' FLOP fields assume the width-256 policy; this script computes its own
WIDTH_256_KEYS = (
    "matmul_params_N",
    "est_flops_per_step_2N_gen_plus_6N_train",
    "est_flops_per_step_incl_ref_and_aux_models",
    "achieved_gflops_brief",
    "achieved_gflops_full",
)
STEM = "grpo_cost_scaling"


# --- the points and their models
def sweep_points(lengths, widths) -> list[tuple[int, int, list[str]]]:
    """(width, new tokens, sweeps) per distinct point; the first point of each sweep is shared."""
    base_width, base_tokens = widths[0], lengths[0]
    points = [
        (base_width, n, ["length"] + (["width"] if n == base_tokens else [])) for n in lengths
    ]
    return points + [(w, base_tokens, ["width"]) for w in widths if w != base_width]


def build_model(policy_dir: Path, width: int, model_dir: Path) -> Path:
    """The policy's architecture at hidden size `width`, seed-0 random init; built once (delete the
    directory to rebuild)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (model_dir / "config.json").is_file():
        return model_dir
    config = LlamaConfig.from_pretrained(policy_dir)
    if width % config.head_dim:
        raise ValueError(f"width {width} is not a multiple of the head dim {config.head_dim}")
    width_scale = width / config.hidden_size
    config.hidden_size = width
    config.num_attention_heads = config.num_key_value_heads = width // config.head_dim
    config.intermediate_size = round(config.intermediate_size * width_scale)
    config.max_position_embeddings = MAX_POSITIONS
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    # write beside and rename, so an interrupted build is never mistaken for a finished one
    partial = model_dir.with_name(model_dir.name + ".partial")
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(policy_dir).save_pretrained(partial)
    partial.rename(model_dir)
    return model_dir


# --- FLOP estimates
def architecture(model_dir: Path) -> dict:
    config = json.loads((model_dir / "config.json").read_text())
    return {
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "intermediate": config["intermediate_size"],
        "vocab": config["vocab_size"],
        "heads": config["num_attention_heads"],
    }


def matmul_params(layers: int, hidden: int, intermediate: int, vocab: int) -> int:
    """N: q, k, v, o (4 h^2), the gated MLP (3 h i) per layer, and the LM head on every position."""
    return layers * (4 * hidden**2 + 3 * hidden * intermediate) + vocab * hidden


def attention_flops(layers: int, hidden: int, sequences: float, seq_len: float) -> float:
    """Scores and value sums: 4 h c per token and layer, c = 1 ... L causally, so 2 h L (L + 1) per
    sequence and layer for one pass; x1 generation, x1 reference, x3 training forward+backward."""
    one_pass = layers * sequences * 2 * hidden * seq_len * (seq_len + 1)
    return 5 * one_pass


def flop_estimates(arch: dict, metrics: dict) -> dict:
    n = matmul_params(arch["layers"], arch["hidden"], arch["intermediate"], arch["vocab"])
    tokens = metrics["prompt_tokens_per_step"] + metrics["completion_tokens_per_step"]
    matmul = 10 * n * tokens
    attention = attention_flops(
        arch["layers"],
        arch["hidden"],
        metrics["sequences_per_step"],
        tokens / metrics["sequences_per_step"],
    )
    median = metrics["median_s_per_step"]
    return {
        "matmul_params_N": n,
        "tokens_per_step": tokens,
        "est_flops_per_step_matmul_10NT": matmul,
        "est_flops_per_step_with_attention": matmul + attention,
        "attention_fraction": attention / (matmul + attention),
        "achieved_gflops_matmul": matmul / median / 1e9,
        "achieved_gflops_with_attention": (matmul + attention) / median / 1e9,
    }


def add_ratios(rows: list[dict]) -> None:
    """(t / t_base) / (F / F_base) against the first row, for both FLOP estimates."""
    base = rows[0]
    for row in rows:
        time_ratio = row["median_s_per_step"] / base["median_s_per_step"]
        for key, name in (
            ("est_flops_per_step_matmul_10NT", "matmul"),
            ("est_flops_per_step_with_attention", "with_attention"),
        ):
            row[f"time_over_flop_prediction_{name}"] = time_ratio / (row[key] / base[key])


# --- one point, in its own process
def measure_point(assets: Path, model_dir: Path, new_tokens: int, warmup: int, steps: int) -> dict:
    """Run GRPO on `model_dir` for warmup + steps steps; timing, tokens, phases, peak RSS."""
    train_fn, cfg = generation_config("grpo", assets, warmup + steps)
    cfg = dataclasses.replace(cfg, model=str(model_dir), max_new_tokens=new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = prepare_run_dir(Path(tmp) / "run", resume=False, overwrite=True)
        started = time.perf_counter()
        train_fn(cfg, run_dir)
        wall = time.perf_counter() - started
        lines = read_metrics(run_dir.metrics_path)
    metrics = generation_metrics("grpo", lines, warmup, assets)
    metrics = {key: value for key, value in metrics.items() if key not in WIDTH_256_KEYS}
    arch = architecture(model_dir)
    return {
        "workload": "grpo",
        "width": arch["hidden"],
        "max_new_tokens": new_tokens,
        "architecture": arch,
        "threads": torch.get_num_threads(),
        "warmup_steps": warmup,
        **metrics,
        **flop_estimates(arch, metrics),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "wall_s": wall,
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
    }


def run_point_process(args, model_dir: Path, new_tokens: int, steps: int) -> dict:
    """This script in --measure mode in a fresh process; its last stdout line is the result."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--assets",
        str(args.assets),
        "--out-dir",
        str(args.out_dir),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(steps),
        "--measure",
        str(model_dir),
        str(new_tokens),
    ]
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- report
def threads_text(threads: int) -> str:
    return f"{threads} thread" + ("s" if threads != 1 else "")


def markdown_table(rows: list[dict], args, steps: int) -> str:
    header = (
        "| sweep | width | new tokens | tokens/step | median s/step | generation s | peak RSS MiB "
        "| est GFLOP (matmul) | est GFLOP (+attention) | attention share | achieved GFLOP/s "
        "| time / FLOP-prop. (matmul) | time / FLOP-prop. (+attention) |"
    )
    lines = [
        f"GRPO step cost, {threads_text(args.threads)}, {args.warmup} warm-up + {steps} timed "
        "steps per point; "
        f"base point width {rows[0]['width']}, {rows[0]['max_new_tokens']} new tokens.",
        "",
        header,
        "|" + "---|" * header.count(" | ") + "---|",
    ]
    for row in rows:
        lines.append(
            f"| {' + '.join(row['sweeps'])} | {row['width']} | {row['max_new_tokens']} "
            f"| {row['tokens_per_step']:,.0f} "
            f"| {row['median_s_per_step']:.3f} "
            f"| {row['phase_s_per_step_median'].get('generation', 0.0):.3f} "
            f"| {row['peak_rss_mib']:,.0f} "
            f"| {row['est_flops_per_step_matmul_10NT'] / 1e9:,.1f} "
            f"| {row['est_flops_per_step_with_attention'] / 1e9:,.1f} "
            f"| {row['attention_fraction']:.1%} "
            f"| {row['achieved_gflops_matmul']:.1f} "
            f"| {row['time_over_flop_prediction_matmul']:.2f} "
            f"| {row['time_over_flop_prediction_with_attention']:.2f} |"
        )
    lines += [
        "",
        "tokens/step = prompt + completion tokens; "
        "achieved GFLOP/s = matmul estimate / median step time; "
        "time / FLOP-prop. = (t / t_base) / (F / F_base), 1 = cost grew as the FLOP estimate did.",
    ]
    return "\n".join(lines) + "\n"


def plain_log_formatter():
    """matplotlib's choice of log ticks to label (fewer minor ones the more decades the axis spans),
    printed as plain numbers: 0.25 rather than 2.5e-01."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, value, pos=None):
            return f"{value:.3g}" if super().__call__(value, pos) else ""

    return PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))


def plot_sweep(axis, rows: list[dict], x_key: str, x_label: str) -> list:
    """Step time (left axis, with the FLOP-proportional lines from the base point) and peak RSS
    (right axis) along one sweep; each point labelled with its matmul FLOP estimate. Returns the
    legend handles."""
    from matplotlib.ticker import NullFormatter

    rows = sorted(rows, key=lambda row: row[x_key])
    xs = [row[x_key] for row in rows]
    times = [row["median_s_per_step"] for row in rows]
    base = rows[0]
    for key, style, label in (
        ("est_flops_per_step_matmul_10NT", "--", "proportional to FLOPs (matmul)"),
        ("est_flops_per_step_with_attention", ":", "proportional to FLOPs (+attention)"),
    ):
        predicted = [base["median_s_per_step"] * row[key] / base[key] for row in rows]
        axis.plot(xs, predicted, style, color="gray", label=label)
    axis.plot(xs, times, "o-", color="tab:blue", label="median step time")
    # log-log: a cost proportional to FLOPs keeps a constant distance to the dashed line
    axis.set(xscale="log", yscale="log", xlabel=x_label, xticks=xs)
    axis.set_ylabel("median seconds per step", color="tab:blue")
    axis.set_xticklabels([str(x) for x in xs])
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.yaxis.set_major_formatter(plain_log_formatter())
    axis.yaxis.set_minor_formatter(plain_log_formatter())
    axis.margins(x=0.15, y=0.15)
    memory = axis.twinx()
    rss = [row["peak_rss_mib"] for row in rows]
    memory.plot(xs, rss, "s-", color="tab:orange", label="peak RSS")
    memory.set_ylabel("peak RSS (MiB)", color="tab:orange")
    memory.set_ylim(0, 1.15 * max(rss))
    # on the twin axes, drawn last, so the labels sit above the memory line
    for x, t, row in zip(xs, times, rows):
        memory.annotate(
            f"{row['est_flops_per_step_matmul_10NT'] / 1e9:,.0f} GFLOP",
            (x, t),
            xycoords=axis.transData,
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=8,
            color="tab:blue",
            bbox={
                "boxstyle": "round,pad=0.1",
                "facecolor": "white",
                "edgecolor": "none",
                "alpha": 0.8,
            },
        )
    return axis.get_legend_handles_labels()[0] + memory.get_legend_handles_labels()[0]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (by_length, by_width) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    base = rows[0]
    handles = plot_sweep(
        by_length,
        [r for r in rows if "length" in r["sweeps"]],
        "max_new_tokens",
        "new tokens per completion",
    )
    by_length.set_title(f"completion length (width {base['width']})")
    plot_sweep(by_width, [r for r in rows if "width" in r["sweeps"]], "width", "hidden size")
    by_width.set_title(f"model width ({base['max_new_tokens']} new tokens)")
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    figure.suptitle(
        f"rlhfkit GRPO step cost (8 prompts x 8 samples, {threads_text(base['threads'])})"
    )
    figure.savefig(path, dpi=120)
    plt.close(figure)


# --- entry point
def run_all(args) -> None:
    lengths, widths, quick_steps = POINT_SETS[args.points]
    steps = quick_steps or args.steps
    work = args.work or args.out_dir / "work"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    jsonl_path = args.out_dir / f"{STEM}.jsonl"
    jsonl_path.write_text("")
    rows = []
    for width, new_tokens, sweeps in sweep_points(lengths, widths):
        model_dir = build_model(
            args.assets / "policy", width, work / f"llama_w{width}_pos{MAX_POSITIONS}"
        )
        print(f"width {width}, {new_tokens} new tokens ...", file=sys.stderr, flush=True)
        row = {"sweeps": sweeps, **run_point_process(args, model_dir, new_tokens, steps)}
        rows.append(row)
        # appended as each point finishes, so an interrupted run keeps what it measured
        with open(jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")
    add_ratios(rows)
    jsonl_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = markdown_table(rows, args, steps)
    (args.out_dir / f"{STEM}.md").write_text(table)
    print(table)
    plot(rows, args.out_dir / f"{STEM}.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--assets", type=Path, required=True, help="the directory make_assets.py wrote"
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument(
        "--work", type=Path, help="where the models are cached (default OUT_DIR/work)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per point")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--points", choices=sorted(POINT_SETS), default="all")
    # internal: measure one point in this process and print its JSON line
    parser.add_argument(
        "--measure", nargs=2, metavar=("MODEL_DIR", "NEW_TOKENS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.measure:
        torch.set_num_threads(args.threads)
        model_dir, new_tokens = Path(args.measure[0]), int(args.measure[1])
        print(
            json.dumps(measure_point(args.assets, model_dir, new_tokens, args.warmup, args.steps)),
            flush=True,
        )
    else:
        run_all(args)


if __name__ == "__main__":
    main()
