import json

from rlhfkit.pipeline import Pipeline
from rlhfkit.pipeline_config import PipelineConfig
from rlhfkit.runtime.config import load_config

TINY = [
    "data.sft_rows_per_task=300", "data.eval_rows_per_task=10", "data.eval_prompts_per_task=8",
    "model.vocab_size=300", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
    "model.intermediate_size=64", "sft.max_steps=6", "sft.batch_size=8", "sft.eval_every=0", "sft.sample_every=0",
    "sft.save_every=0", "sft.progress=false", "sft.tensorboard=false",
    "collect.train_prompts=24", "collect.heldout_prompts=8", "collect.responses_per_prompt=4",
    "collect.max_new_tokens=16", "rm.max_steps=3", "rm.batch_size=4", "rm.save_every=0", "rm.progress=false",
    "rm.tensorboard=false", "ppo.max_steps=2", "ppo.prompts_per_step=8", "ppo.mini_batch_size=8",
    "ppo.ppo_epochs=1", "ppo.max_new_tokens=12", "ppo.progress=false", "ppo.tensorboard=false",
    "grpo.max_steps=2", "grpo.prompts_per_step=4", "grpo.group_size=4", "grpo.mini_batch_size=16",
    "grpo.max_new_tokens=12", "grpo.progress=false", "grpo.tensorboard=false",
    "dpo.max_steps=2", "dpo.batch_size=4", "dpo.progress=false", "dpo.tensorboard=false",
    "raft.max_steps=2", "raft.prompts_per_round=4", "raft.samples_per_prompt=4", "raft.max_new_tokens=12",
    "raft.progress=false", "raft.tensorboard=false",
    "eval_max_new_tokens=12", "win_rate_samples=1",
]


def test_pipeline_runs_every_stage_and_writes_the_table_numbers(tmp_path):
    cfg = load_config(PipelineConfig, overrides=[f"runs_dir={tmp_path}", "name=tiny", *TINY])
    summary = Pipeline(cfg).run_all()
    stages = list(summary["stages"])
    assert stages == ["data", "model", "sft", "eval sft", "collect", "reward model", "ppo", "grpo", "dpo", "raft"]
    assert summary["ppo"]["steps"] == 2 and summary["grpo"]["steps"] == 2
    for key in ("win_rate_greedy", "win_rate_sampled"):
        rate = summary["ppo"][key]
        assert summary["ppo"][f"{key}_low"] <= rate <= summary["ppo"][f"{key}_high"]
    assert summary["ppo"]["win_rate_greedy_n"] == 8 and summary["ppo"]["win_rate_sampled_n"] == 8
    # GRPO's baseline evaluation is the SFT model on the same held-out prompts
    assert summary["grpo"]["accuracy_before"] == summary["sft_arith"]["accuracy"]
    assert summary["raft"]["accuracy_before"] == summary["sft_arith"]["accuracy"] and summary["raft"]["rounds"] == 2
    assert summary["dpo"]["steps"] == 2 and summary["dpo"]["loss"] == "plackett_luce"
    assert summary["dpo"]["win_rate_greedy_n"] == 8
    on_disk = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    assert all(on_disk[stage] == summary[stage] for stage in ("ppo", "grpo", "dpo", "raft"))
    for stage in ("sft", "rm", "ppo", "grpo", "dpo", "raft"):
        assert (tmp_path / "tiny" / stage / "final" / "config.json").exists()
