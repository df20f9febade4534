import dataclasses
import hashlib
import json
import random

import pytest
import torch

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.labelling import sample
from rlhfkit.labelling.candidates import read_items
from rlhfkit.labelling.sample import SampleConfig, run_sample
from rlhfkit.runtime.rundir import RunDir, prepare_run_dir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.arith import ArithTask

PROMPTS = [
    {"prompt": "User: How can I sleep better?\nAssistant:"},
    {"prompt": "User: What is 3 + 4?\nAssistant:", "answer": "7"},
    {"prompt": [{"role": "user", "content": "How do I start running?"}]},
    {"prompt": "User: Any tips for cooking rice?\nAssistant:"},
    {"prompt": "User: How do I keep a plant alive?\nAssistant:"},
]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    return str(path)


def config(model, prompts, **overrides) -> SampleConfig:
    # k=2 and batch_size=4: two prompts a batch, three batches for five prompts
    settings = dict(
        model=str(model), prompts=prompts, k=2, batch_size=4, max_new_tokens=6, progress=False
    )
    return SampleConfig(**{**settings, **overrides})


def run_dir(tmp_path, name) -> RunDir:
    return prepare_run_dir(tmp_path / name, resume=False, overwrite=False)


def test_one_row_per_prompt_with_k_responses_and_where_they_come_from(
    tiny_model_dir, prompts_file, tmp_path
):
    cfg = config(tiny_model_dir, prompts_file, seed=5, temperature=0.8, top_p=0.9)
    result = run_sample(cfg, run_dir(tmp_path, "run"))

    items = read_items(result.path)
    assert (result.rows, result.written) == (5, 5)
    assert [item.prompt for item in items] == [row["prompt"] for row in PROMPTS]
    assert all(len(item.responses) == 2 for item in items)
    assert len({item.item_id for item in items}) == 5
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    assert items[0].source == {
        "model": str(tiny_model_dir),
        "weights_sha256": hashlib.sha256(b"model.safetensors\0" + weights).hexdigest(),
        "temperature": 0.8,
        "top_p": 0.9,
        "max_new_tokens": 6,
        "seed": 5,
        "k": 2,
    }


def test_the_same_seed_writes_the_same_file_and_another_seed_other_responses(
    tiny_model_dir, prompts_file, tmp_path
):
    first = run_sample(config(tiny_model_dir, prompts_file), run_dir(tmp_path, "a"))
    again = run_sample(config(tiny_model_dir, prompts_file), run_dir(tmp_path, "b"))
    other = run_sample(config(tiny_model_dir, prompts_file, seed=1), run_dir(tmp_path, "c"))

    assert first.path.read_bytes() == again.path.read_bytes()
    responses = [item.responses for item in read_items(first.path)]
    assert [item.responses for item in read_items(other.path)] != responses


def interrupt_after(monkeypatch, batches: int) -> None:
    """Make the sampler stop the run (as Ctrl-C would) when asked for batch `batches` + 1."""
    calls = []
    real = sample.sample_responses

    def stopping(*args, **kwargs):
        if len(calls) == batches:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sample, "sample_responses", stopping)


def test_a_run_stopped_after_one_batch_resumes_to_the_same_bytes(
    tiny_model_dir, prompts_file, tmp_path, monkeypatch
):
    whole = run_sample(config(tiny_model_dir, prompts_file), run_dir(tmp_path, "whole"))
    run = run_dir(tmp_path, "stopped")
    interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        run_sample(config(tiny_model_dir, prompts_file), run)
    assert len(read_items(whole.path)) == 5
    assert len(read_items(run.root / "candidates.jsonl")) == 2  # the first batch, flushed

    monkeypatch.undo()
    resumed = run_sample(config(tiny_model_dir, prompts_file), run, resume=True)

    assert (resumed.rows, resumed.written) == (5, 3)
    assert resumed.path.read_bytes() == whole.path.read_bytes()


def test_a_resume_cuts_a_half_written_row_and_rewrites_the_rest_of_its_batch(
    tiny_model_dir, prompts_file, tmp_path
):
    whole = run_sample(config(tiny_model_dir, prompts_file), run_dir(tmp_path, "whole"))
    lines = whole.path.read_bytes().splitlines(keepends=True)
    run = run_dir(tmp_path, "killed")
    # killed inside batch 1: its first row complete, its second half written
    (run.root / "candidates.jsonl").write_bytes(b"".join(lines[:3]) + lines[3][:25])

    resumed = run_sample(config(tiny_model_dir, prompts_file), run, resume=True)

    assert resumed.written == 2
    assert resumed.path.read_bytes() == whole.path.read_bytes()


def test_a_resume_refuses_rows_sampled_with_other_settings(tiny_model_dir, prompts_file, tmp_path):
    run = run_dir(tmp_path, "run")
    run_sample(config(tiny_model_dir, prompts_file, seed=1), run)

    with pytest.raises(RlhfkitError, match="holds rows of other prompts"):
        run_sample(config(tiny_model_dir, prompts_file, seed=2), run, resume=True)


def test_bf16_sampling_is_recorded_and_a_resume_in_fp32_refused(
    tiny_model_dir, prompts_file, tmp_path, monkeypatch
):
    dtypes, real = [], sample.sample_responses
    monkeypatch.setattr(
        sample, "sample_responses", lambda *a, **k: dtypes.append(k["dtype"]) or real(*a, **k)
    )
    run = run_dir(tmp_path, "run")
    result = run_sample(config(tiny_model_dir, prompts_file, precision="bf16"), run)
    assert set(dtypes) == {torch.bfloat16}
    assert all(item.source["precision"] == "bf16" for item in read_items(result.path))
    with pytest.raises(RlhfkitError, match="holds rows of other prompts"):
        run_sample(config(tiny_model_dir, prompts_file), run, resume=True)


def test_a_task_gives_its_prompts_from_the_run_seed(tiny_model_dir, tmp_path):
    cfg = config(tiny_model_dir, "", task="arith", num_prompts=3, seed=4)
    result = run_sample(cfg, run_dir(tmp_path, "run"))

    rng = random.Random(derive_seed(4, SeedStream.TRAIN_PROMPTS))
    expected = [p.prompt for p in ArithTask().prompts(3, rng)]
    assert [item.prompt for item in read_items(result.path)] == expected


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(k=1), ConfigError, r"config key 'k': must be in \[2, 9\], got 1"),
        (dict(k=10), ConfigError, r"config key 'k': must be in \[2, 9\], got 10"),
        (dict(temperature=0.0), ConfigError, "config key 'temperature'"),
        (dict(prompts=""), RlhfkitError, r"needs prompts=PATH or task=NAME$"),
        (dict(task="arith"), RlhfkitError, r"needs prompts=PATH or task=NAME, not both$"),
        (dict(num_prompts=2), RlhfkitError, "num_prompts=2 is read only with task="),
        (dict(model=""), RlhfkitError, "needs model=PATH"),
    ],
)
def test_bad_settings_stop_before_anything_is_written(
    tiny_model_dir, prompts_file, tmp_path, overrides, error, message
):
    run = run_dir(tmp_path, "run")
    with pytest.raises(error, match=message):
        run_sample(dataclasses.replace(config(tiny_model_dir, prompts_file), **overrides), run)
    assert not (run.root / "candidates.jsonl").exists()
