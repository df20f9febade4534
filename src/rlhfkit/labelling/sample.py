"""`rlhfkit sample`: K candidate responses per prompt from one policy, written to
`candidates.jsonl` in the run directory for people to rank.

Every row records where its responses come from (`source`: the model directory, the sha256 of
its weights, the sampler's settings and seed), so each label can be traced to the policy that
produced it. Prompts are sampled in batches; batch b draws from its own seed,
`derive_seed(seed, CANDIDATES, b)`, and is appended and flushed as soon as it is done. A
resumed run (`--resume`) cuts a partial last line, re-samples the batch it stopped in and writes
only the rows that are missing, so its file equals an uninterrupted run's byte for byte.
"""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.data.formats import Format, Text
from rlhfkit.data.loading import load_examples
from rlhfkit.errors import RlhfkitError
from rlhfkit.labelling.candidates import (
    CANDIDATES_FILE,
    append_rows,
    complete_rows,
    item_to_row,
    read_items,
)
from rlhfkit.labelling.records import Item
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.rollout.sample import sample_responses
from rlhfkit.runtime.config_bounds import validate
from rlhfkit.runtime.device import Precision, resolve_device, sampling_dtype
from rlhfkit.runtime.progress import ProgressBar
from rlhfkit.runtime.run_config import RunConfig
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.runtime.seeding import SeedStream, derive_seed
from rlhfkit.tasks.registry import TaskName, get_task


@dataclass(frozen=True)
class SampleConfig(RunConfig):
    """`seed` seeds the task's prompts and every batch's sampling."""

    model: str = ""
    """The policy: a causal-LM directory."""
    prompts: str = ""
    """Prompt-only data (`prompt`, any other columns ignored); every row is used. Empty = the
    prompts of `task`."""
    task: TaskName | None = None
    """A built-in task whose generator writes the prompts (with `num_prompts`)."""
    num_prompts: int = 100
    """Prompts drawn from `task`."""
    k: int = 4
    """Responses sampled per prompt, 2 to 9: a ranking needs two, and the labelling page keys
    them 1-9."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens holding this much probability."""
    max_new_tokens: int = 128
    """Length limit of every response, in tokens."""
    batch_size: int = 64
    """Responses generated per batch: batch_size // k prompts (at least one) with all their
    responses."""
    precision: Precision = Precision.FP32
    """fp32, or bf16: sampled as a bf16 run samples (bf16 weights and cache, the draws in
    float32); on a CPU without bf16 units emulated and far slower."""
    progress: bool = True
    """Show a progress bar."""


@dataclass(frozen=True)
class SampleResult:
    path: Path
    """The candidates file."""
    rows: int
    """Rows it holds."""
    written: int
    """Rows this run wrote (fewer than `rows` after a resume)."""


def check_sample_config(cfg: SampleConfig) -> None:
    validate(cfg)
    if not cfg.model:
        raise RlhfkitError("rlhfkit sample needs model=PATH (a causal-LM directory)")
    if bool(cfg.prompts) == (cfg.task is not None):
        both = ", not both" if cfg.prompts else ""
        raise RlhfkitError(f"rlhfkit sample needs prompts=PATH or task=NAME{both}")
    if cfg.prompts and cfg.num_prompts != SampleConfig.num_prompts:
        raise RlhfkitError(
            f"num_prompts={cfg.num_prompts} is read only with task= (prompts drawn from its "
            f"generator); every row of prompts={cfg.prompts} is used: cut the file to take fewer"
        )


def load_prompts(cfg: SampleConfig) -> list[Text]:
    if cfg.prompts:
        return [example.prompt for example in load_examples(cfg.prompts, Format.PROMPT)]
    rng = random.Random(derive_seed(cfg.seed, SeedStream.TRAIN_PROMPTS))
    return [example.prompt for example in get_task(cfg.task).prompts(cfg.num_prompts, rng)]


def weights_sha256(model_dir: str | Path) -> str:
    """One sha256 over every `*.safetensors` file of a model directory, in name order, each
    file's name before its bytes (a sharded model gives one digest for all its shards)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise RlhfkitError(f"model directory {model_dir}: no weights (*.safetensors)")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def sample_source(cfg: SampleConfig, weights_digest: str) -> dict:
    """What every row records about the policy and the sampler (bf16 sampling named; fp32's
    rows as they always were, so their ids stay the same)."""
    bf16 = cfg.precision == Precision.BF16
    return {
        "model": cfg.model,
        "weights_sha256": weights_digest,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_new_tokens": cfg.max_new_tokens,
        "seed": cfg.seed,
        "k": cfg.k,
        **({"precision": Precision.BF16.value} if bf16 else {}),
    }


def item_id(source: dict, index: int, prompt: Text) -> str:
    """16 hex digits of a digest of the source, the prompt and its position: unique within a
    file, and different for another model, seed or prompt file, so labels of several
    candidate files never share an id."""
    key = json.dumps({"source": source, "index": index, "prompt": prompt}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_sample(cfg: SampleConfig, run: RunDir, *, resume: bool = False) -> SampleResult:
    """Sample `k` responses to every prompt into `run.root / candidates.jsonl`."""
    # step 1. the prompts, the policy, and what every row says about where it comes from
    check_sample_config(cfg)
    prompts = load_prompts(cfg)
    device = resolve_device(cfg.device)
    model, tokenizer = load_causal_lm(cfg.model).to(device), load_tokenizer(cfg.model)
    source = sample_source(cfg, weights_sha256(cfg.model))
    ids = [item_id(source, index, prompt) for index, prompt in enumerate(prompts)]
    path = run.root / CANDIDATES_FILE
    # step 2. where to start: after the rows a stopped run completed
    done = _rows_to_keep(path, ids) if resume else 0
    if not resume:
        path.write_bytes(b"")
    per_batch = max(1, cfg.batch_size // cfg.k)
    num_batches = -(-len(prompts) // per_batch)
    first_batch = done // per_batch
    # step 3. each batch from its own seed, appended as soon as it is sampled
    with ProgressBar(
        num_batches, "sample", enabled=cfg.progress, start=first_batch, with_loss=False
    ) as bar:
        for batch in range(first_batch, num_batches):
            start = batch * per_batch
            batch_prompts = prompts[start : start + per_batch]
            samples = sample_responses(
                model,
                tokenizer,
                batch_prompts,
                num_samples=cfg.k,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                batch_size=cfg.batch_size,
                seed=derive_seed(cfg.seed, SeedStream.CANDIDATES, batch),
                dtype=sampling_dtype(cfg.precision),
            )
            rows = [
                item_to_row(Item(ids[start + i], prompt, tuple(texts), source))
                for i, (prompt, texts) in enumerate(zip(batch_prompts, samples.texts))
            ]
            # a run stopped inside this batch already wrote its first rows
            append_rows(path, rows[max(0, done - start) :])
            bar.update(1, tokens=samples.num_tokens)
    return SampleResult(path=path, rows=len(prompts), written=len(prompts) - done)


def _rows_to_keep(path: Path, ids: list[str]) -> int:
    """How many complete rows a stopped run left, after checking they are the rows this run
    would write (the same prompts, model and settings: their item ids match)."""
    done = complete_rows(path)
    if done == 0:
        return 0
    written = [item.item_id for item in read_items(path)]
    if done > len(ids) or written != ids[:done]:
        raise RlhfkitError(
            f"--resume: {path} holds rows of other prompts, another model or other settings; "
            "start a new run"
        )
    return done
