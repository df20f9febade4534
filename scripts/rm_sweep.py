"""Reward-model sweep on a GPU: one pipeline run collects rankings, then several settings train
on them."""

import json
from pathlib import Path

import transformers

from rlhfkit.data.loading import write_jsonl
from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.train.reward import RewardConfig, train_reward_model

transformers.utils.logging.set_verbosity_error()
over = [
    "name=sweep",
    "runs_dir=/tmp/runs",
    "device=cuda",
    "sft.max_steps=600",
    "rm.max_steps=1",
    "collect.train_prompts=2400",
    "sft.progress=false",
    "rm.progress=false",
]
p = Pipeline(load_config(PipelineConfig, None, over))
p.run_all()
root = Path("/tmp/runs/sweep")
rows = [json.loads(line) for line in open(root / "collect/rankings.jsonl")]
for n in (1200, 2400):
    write_jsonl(root / f"r{n}.jsonl", rows[:n])
settings = [
    dict(n=1200, lr=1e-3, max_steps=200),
    dict(n=1200, lr=3e-4, max_steps=300),
    dict(n=1200, lr=1e-3, max_steps=400),
    dict(n=2400, lr=1e-3, max_steps=300),
    dict(n=2400, lr=1e-3, max_steps=450),
    dict(n=2400, lr=5e-4, max_steps=450),
    dict(n=1200, lr=1e-3, max_steps=200, weight_decay=0.1),
    dict(n=1200, lr=1e-3, max_steps=200, batch_size=32),
    dict(n=1200, lr=1e-3, max_steps=200, num_heads=4),
    dict(n=1200, lr=2e-3, max_steps=200),
]
for s in settings:
    s = dict(s)
    n = s.pop("n")
    cfg = RewardConfig(
        model=str(root / "sft/final"),
        train_data=str(root / f"r{n}.jsonl"),
        eval_data=str(root / "collect/heldout_rankings.jsonl"),
        eval_every=50,
        save_every=0,
        progress=False,
        tensorboard=False,
        device="cuda",
        **s,
    )
    run = prepare_run_dir(Path("/tmp/runs/rm_sweep"), resume=False, overwrite=True)
    res = train_reward_model(cfg, run)
    print("RESULT", n, s, [round(a, 4) for _, a in res.eval_accuracy], flush=True)
