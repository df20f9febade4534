"""GPU path check: the demo pipeline on CUDA with every training stage in bf16 autocast, then a
reload of its SFT and reward models in plain transformers.

    python scripts/gpu_check.py [--quick] [--device cuda] [--runs-dir /tmp/runs] [KEY=VALUE ...]

--quick shortens every stage (fewer steps and prompts): a check that each stage, the
evaluation and the report run on the device, not the demo's results. Further KEY=VALUE
overrides go to the pipeline's config.
"""

import argparse
import time

import torch
import transformers

from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config

STAGES = ("sft", "rm", "ppo", "grpo", "dpo", "raft")
QUICK = [
    "data.sft_rows_per_task=1000",
    "data.eval_prompts_per_task=50",
    "sft.max_steps=200",
    "collect.train_prompts=200",
    "collect.heldout_prompts=50",
    "rm.max_steps=40",
    "ppo.max_steps=4",
    "grpo.max_steps=4",
    "dpo.max_steps=20",
    "raft.max_steps=4",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every stage shortened")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs-dir", default="/tmp/runs")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE pipeline config overrides")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    print(torch.__version__, transformers.__version__, device, flush=True)
    over = [
        "name=gpu",
        f"runs_dir={args.runs_dir}",
        f"device={args.device}",
        "sft.max_steps=600",
        "rm.max_steps=200",
        "collect.train_prompts=1200",
        *[f"{stage}.precision=bf16" for stage in STAGES],
        *[f"{stage}.progress=false" for stage in STAGES],
        *(QUICK if args.quick else []),
        *args.overrides,
    ]
    cfg = load_config(PipelineConfig, None, over)
    started = time.perf_counter()
    Pipeline(cfg).run_all()
    print(f"pipeline ran in {time.perf_counter() - started:.0f} s", flush=True)
    final = f"{args.runs_dir}/gpu"
    m = transformers.AutoModelForCausalLM.from_pretrained(f"{final}/sft/final")
    r = transformers.AutoModelForSequenceClassification.from_pretrained(f"{final}/rm/final")
    print("reload ok", type(m).__name__, type(r).__name__, r.config.num_labels)


if __name__ == "__main__":
    main()
