"""`rlhfkit models import|tiny`, a .gguf file as model=, and the learning-rate guard, end to end
through the command line."""

import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.models.tiny import tokens_per_word
from tests.conftest import SMOLLM2_SIZES
from tests.models.tiny_gguf import write_tiny_gguf
from tests.test_cli import GOOD_SFT, assert_one_line_error, run_main, write_rows

TINY_FLAGS = ["--vocab-size", "400", "--hidden-size", "32", "--layers", "2", "--heads", "2"]
TINY_FLAGS += ["--intermediate-size", "64"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_model_dir):
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path / "cache"))


def garden_corpus(rows: int) -> list[str]:
    """Text unlike the built-in tasks': the demo tokenizer cuts it into many pieces."""
    rng = random.Random(0)
    plants = ["tomatoes", "lavender", "rhubarb", "hydrangeas", "courgettes", "marigolds"]
    verbs = ["prune", "water", "mulch", "transplant", "harvest", "fertilise"]
    seasons = ["in early spring", "after flowering", "before the first frost", "every fortnight"]
    return [
        f"Gardeners {rng.choice(verbs)} their {rng.choice(plants)} {rng.choice(seasons)}, "
        f"then {rng.choice(verbs)} the {rng.choice(plants)} {rng.choice(seasons)}."
        for _ in range(rows)
    ]


def test_import_writes_a_plain_directory(monkeypatch, capsys, tmp_path, tiny_gguf):
    code, out, err = run_main(
        monkeypatch, capsys, "models", "import", tiny_gguf, "--out", tmp_path / "m"
    )
    assert code == 0, err
    assert f"model directory written to {tmp_path / 'm'}" in out
    assert "GGUF tensors" not in err  # transformers' conversion bar, quiet as its others are
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    code, _, err = run_main(
        monkeypatch, capsys, "models", "import", tiny_gguf, "--out", tmp_path / "m"
    )
    assert_one_line_error(code, err, "already exists and is not empty")
    (tmp_path / "notes.txt").write_text("not a model")
    code, _, err = run_main(
        monkeypatch, capsys, "models", "import", tmp_path / "notes.txt", "--out", tmp_path / "n"
    )
    assert_one_line_error(code, err, "notes.txt", "not a GGUF file")
    assert not (tmp_path / "n").exists()


def test_sft_trains_from_a_gguf_file(monkeypatch, capsys, tmp_path, tiny_gguf, cache):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT] * 4)
    args = ["sft", f"model={tiny_gguf}", f"train_data={data}", "max_steps=2", "batch_size=2"]
    args += ["progress=false", "tensorboard=false", "sample_every=0", "save_every=0"]
    code, out, err = run_main(monkeypatch, capsys, *args, "--runs-dir", tmp_path / "runs")
    assert code == 0, err
    final = tmp_path / "runs" / "sft" / "final"
    assert f"model saved to {final}" in out
    # rlhfkit says it converts the file; transformers' conversion bar stays quiet
    assert f"converting {tiny_gguf}" in out and "GGUF tensors" not in err
    trained = AutoModelForCausalLM.from_pretrained(final)
    start = load_causal_lm(tiny_gguf)  # the cached conversion
    assert not torch.equal(trained.lm_head.weight, start.lm_head.weight)
    assert (
        AutoTokenizer.from_pretrained(final).chat_template
        == load_tokenizer(tiny_gguf).chat_template
    )


def test_tiny_fits_the_users_text(monkeypatch, capsys, tmp_path, tiny_model_dir):
    corpus = garden_corpus(400)
    (tmp_path / "garden.txt").write_text("\n".join(corpus) + "\n")
    out_dir = tmp_path / "garden_model"
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "models",
        "tiny",
        "--corpus",
        tmp_path / "garden.txt",
        "--out",
        out_dir,
        *TINY_FLAGS,
    )
    assert code == 0, err
    assert f"tiny model written to {out_dir}" in out and "400 texts" in out
    model, tokenizer = load_causal_lm(out_dir), load_tokenizer(out_dir)
    assert isinstance(model.config, LlamaConfig) and model.config.hidden_size == 32
    assert model.config.vocab_size == len(tokenizer) <= 400
    # fitted to the garden text: far fewer tokens per word than the demo's tokenizer
    fitted = tokens_per_word(tokenizer, corpus)
    demo = tokens_per_word(load_tokenizer(tiny_model_dir), corpus)
    assert fitted < 0.75 * demo, (fitted, demo)
    messages = [{"role": "user", "content": "When do I prune lavender?"}]
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_tiny_reads_dataset_files(monkeypatch, capsys, tmp_path):
    rows = [{"prompt": text[:30], "completion": text[30:]} for text in garden_corpus(200)]
    write_rows(tmp_path / "garden.jsonl", rows)
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "models",
        "tiny",
        "--corpus",
        tmp_path / "garden.jsonl",
        "--out",
        tmp_path / "m",
        *TINY_FLAGS,
    )
    assert code == 0, err
    assert "400 texts" in out  # a prompt and a completion per row
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "models",
        "tiny",
        "--corpus",
        tmp_path / "garden.jsonl",
        "--out",
        tmp_path / "m",
        *TINY_FLAGS,
    )
    assert_one_line_error(code, err, "already exists and is not empty")


@pytest.mark.parametrize(
    "setup, extra, fragment",
    [
        (lambda tmp: None, [], "no such file"),
        (lambda tmp: (tmp / "corpus.txt").write_text("\n \n"), [], "no text"),
        (lambda tmp: (tmp / "corpus.txt").write_text("hi\n"), ["--heads", "3"], "multiple of"),
        (lambda tmp: (tmp / "corpus.txt").write_text("hi\n"), ["--layers", "0"], "--layers must"),
        (
            lambda tmp: (tmp / "corpus.txt").write_text("hi\n"),
            ["--vocab-size", "10"],
            "at least 260",
        ),
    ],
    ids=["missing", "empty", "bad-heads", "no-layers", "vocabulary-below-the-bytes"],
)
def test_tiny_bad_input(monkeypatch, capsys, tmp_path, setup, extra, fragment):
    setup(tmp_path)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "models",
        "tiny",
        "--corpus",
        tmp_path / "corpus.txt",
        "--out",
        tmp_path / "m",
        *TINY_FLAGS,
        *extra,
    )
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "m").exists()


def test_learning_rate_guard(monkeypatch, capsys, tmp_path):
    # a SmolLM2-shaped config without weights: the guard decides before anything is loaded
    model = tmp_path / "smollm2"
    LlamaConfig(**SMOLLM2_SIZES).save_pretrained(model)
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT])
    args = ["sft", f"model={model}", f"train_data={data}", "--runs-dir", tmp_path / "runs"]
    code, _, err = run_main(monkeypatch, capsys, *args)  # SFT's default lr, 1e-3
    assert_one_line_error(code, err, "lr=0.001 is far too large", "135M parameters", "--force-lr")
    assert not (tmp_path / "runs" / "sft").exists()  # a refused fresh run leaves no directory
    # a sensible rate, or --force-lr, passes the guard and meets what the directory lacks
    for extra in (["lr=2e-5"], ["--force-lr"]):
        code, _, err = run_main(monkeypatch, capsys, *args, *extra, "--overwrite")
        assert_one_line_error(code, err, "no tokenizer")
    code, out, _ = run_main(monkeypatch, capsys, *args, "--print-config")
    assert code == 0 and json.loads(out)["lr"] == 1e-3 and json.loads(out)["force_lr"] is False
    # the pipeline checks its stages' rates against a pretrained base model, naming the stage
    pipeline = ["pipeline", f"model.base_model={model}", f"runs_dir={tmp_path / 'runs'}"]
    code, _, err = run_main(monkeypatch, capsys, *pipeline)
    assert_one_line_error(code, err, "sft.lr=0.002 is far too large", "--force-lr")
    assert not (tmp_path / "runs" / "demo").exists()
    # --force-lr is the config key force_lr, for a trainer as for a job made of trainers
    for command in (args, ["pipeline", f"model.base_model={model}"]):
        code, out, _ = run_main(monkeypatch, capsys, *command, "--force-lr", "--print-config")
        assert code == 0 and json.loads(out)["force_lr"] is True
