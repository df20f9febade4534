import contextlib
import dataclasses
import json
import random
import shutil
import sys
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rlhfkit.cli import main
from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.data.tokenize import tokenize_sft
from rlhfkit.errors import NumericalFault
from rlhfkit.models.loading import load_causal_lm, load_tokenizer
from rlhfkit.objectives.sft import sft_loss
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import prepare_run_dir
from rlhfkit.tasks.arith import ArithTask
from rlhfkit.train.sft import SFTConfig, eval_loss, train_sft


def write_jsonl(path, examples):
    path.write_text("".join(json.dumps(dataclasses.asdict(e)) + "\n" for e in examples))
    return str(path)


@pytest.fixture
def arith_data(tmp_path):
    examples = ArithTask(flawed_fraction=0.0).sft_examples(230, random.Random(1))
    return write_jsonl(tmp_path / "train.jsonl", examples[:200]), write_jsonl(
        tmp_path / "eval.jsonl", examples[200:]
    )


def config(model, train, held_out, **overrides) -> SFTConfig:
    settings = dict(
        model=str(model),
        train_data=train,
        eval_data=held_out,
        batch_size=8,
        max_steps=30,
        lr=3e-3,
        warmup_steps=3,
        eval_every=10,
        sample_every=30,
        num_samples=2,
        sample_max_new_tokens=12,
        save_every=0,
        progress=False,
        tensorboard=False,
    )
    return SFTConfig(**{**settings, **overrides})


def test_short_sft_run_learns_and_writes_its_outputs(tiny_model_dir, arith_data, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    result = train_sft(config(tiny_model_dir, *arith_data), run)

    losses = result.train_losses
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    # held-out loss after 10, 20 and 30 steps, falling
    assert [step for step, _ in result.eval_losses] == [10, 20, 30]
    held_out = [loss for _, loss in result.eval_losses]
    assert held_out[0] > held_out[1] > held_out[2]

    metrics = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in metrics] == list(range(1, 31))
    assert metrics[-1]["loss"] == pytest.approx(losses[-1])
    # the result holds the same rows and evaluations, as every trainer's does
    assert [row["step"] for row in result.history] == list(range(1, 31))
    assert [row["loss"] for row in result.history] == losses
    assert result.evals == [(step, {"loss": loss}) for step, loss in result.eval_losses]
    samples = [json.loads(line) for line in (run.root / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(s["step"] == 30 for s in samples)
    assert samples[0]["prompt"].startswith("Q: ")

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert result.model_dir == run.final
    assert (
        model.config.vocab_size
        == AutoModelForCausalLM.from_pretrained(tiny_model_dir).config.vocab_size
    )


def test_gradient_accumulation_runs_and_learns(tiny_model_dir, arith_data, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir, arith_data[0], "", batch_size=4, grad_accum=2, max_steps=10, eval_every=10
    )
    result = train_sft(cfg, run)
    assert len(result.train_losses) == 10
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.eval_losses == [] and not (run.root / "samples.jsonl").exists()
    assert (run.final / "model.safetensors").is_file()


def base_eval_loss(model_dir, eval_path: str) -> float:
    tokenizer = load_tokenizer(model_dir)
    rows, _ = tokenize_sft(
        tokenizer, load_examples(eval_path, Format.SFT), max_length=256, truncation="keep_start"
    )
    return eval_loss(load_causal_lm(model_dir), rows, tokenizer.pad_token_id, 8)


def test_lora_trains_only_adapters_resumes_from_them_and_saves_a_merged_model(
    tiny_model_dir, arith_data, tmp_path
):
    cfg = config(tiny_model_dir, *arith_data, lora_r=8, lora_alpha=16, max_steps=12, lr=1e-2)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    straight = train_sft(dataclasses.replace(cfg, save_every=6), run)
    # the held-out loss fell below the base model's (adapters alone move a random tiny model
    # less than full fine-tuning: its token frequencies sit in the embeddings)
    assert straight.eval_losses[-1][1] < base_eval_loss(tiny_model_dir, arith_data[1]) - 0.05
    # the checkpoint holds only the adapters; the final model is a plain merged one
    saved = sorted((run.checkpoints / "step_00000006").rglob("*.safetensors"))
    assert [p.name for p in saved] == ["adapter_model.safetensors"]
    base, final = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(run.final / "model.safetensors"),
    )
    assert base.keys() == final.keys() and not any("lora" in key for key in final)
    moved = [key for key in base if not torch.equal(base[key], final[key])]
    # adapters sit on the linear layers: their weights change, the norms and embeddings do not
    assert moved and all("proj" in key for key in moved)
    AutoModelForCausalLM.from_pretrained(run.final)
    # resumed from the adapters at step 6, the run ends where the straight one did
    shutil.rmtree(run.final)
    resumed = prepare_run_dir(tmp_path / "run", resume=True, overwrite=False)
    again = train_sft(dataclasses.replace(cfg, save_every=6), resumed, resume=True)
    assert again.train_losses == straight.train_losses[6:]


def test_lora_on_named_layers_moves_only_those_layers_in_the_merged_model(
    tiny_model_dir, arith_data, tmp_path
):
    cfg = config(
        tiny_model_dir,
        arith_data[0],
        "",
        lora_r=4,
        lora_dropout=0.1,
        lora_target_modules=("q_proj", "v_proj"),
        max_steps=2,
        lr=1e-2,
    )
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    train_sft(cfg, run)
    base = load_file(tiny_model_dir / "model.safetensors")
    final = load_file(run.final / "model.safetensors")
    moved = {key for key in base if not torch.equal(base[key], final[key])}
    assert moved and {key.split(".")[-2] for key in moved} == {"q_proj", "v_proj"}


def test_checkpoints_are_written_and_pruned(tiny_model_dir, arith_data, tmp_path):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    train_sft(
        config(tiny_model_dir, arith_data[0], "", max_steps=8, save_every=2, keep_last=2), run
    )
    # steps 2, 4, 6 were saved (8 is the final model); only the last two are kept
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step_00000004", "step_00000006"]
    assert (run.checkpoints / "step_00000006" / "checkpoint.json").is_file()


def test_file_order_trains_the_first_step_on_the_first_rows(tiny_model_dir, arith_data, tmp_path):
    from rlhfkit.data.formats import Format
    from rlhfkit.data.loading import load_examples
    from rlhfkit.data.tokenize import tokenize_sft
    from rlhfkit.models.loading import load_causal_lm, load_tokenizer
    from rlhfkit.train.sft import eval_loss

    train, held_out = arith_data
    cfg = config(
        tiny_model_dir,
        train,
        held_out,
        max_steps=1,
        warmup_steps=0,
        shuffle=False,
        eval_every=0,
        sample_every=0,
    )
    first_loss = train_sft(
        cfg, prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    ).train_losses[0]
    tokenizer = load_tokenizer(tiny_model_dir)
    rows, _ = tokenize_sft(
        tokenizer,
        load_examples(train, Format.SFT)[:8],
        max_length=cfg.max_length,
        truncation=cfg.truncation,
    )
    # the loss of step 1 is the untrained model's token-mean loss on rows 0-7 of the file
    assert first_loss == pytest.approx(
        eval_loss(load_causal_lm(tiny_model_dir), rows, tokenizer.pad_token_id, 8), abs=1e-5
    )


def test_response_window_gives_the_loss_of_the_full_logits(tiny_model_dir):
    import torch

    from rlhfkit.models.loading import load_causal_lm
    from rlhfkit.objectives.sft import sft_loss
    from rlhfkit.train.sft import response_window_logits

    model = load_causal_lm(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9, 1], [10, 11, 12, 13, 14, 15]])
    attention = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    response = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    batch = {"input_ids": ids, "attention_mask": attention, "response_mask": response}
    logits, window_ids, window_mask = response_window_logits(model, batch)
    assert logits.shape[1] == 4  # positions 2..5: position 2 predicts the first response token
    full = sft_loss(model(input_ids=ids, attention_mask=attention).logits, ids, response, 4)
    assert torch.allclose(sft_loss(logits, window_ids, window_mask, 4), full, atol=1e-6)


def nan_loss_from_step(first_bad: int):
    """`sft_loss` turned NaN from the `first_bad`-th call on: a run that diverges. (The tiny
    model stays finite at any learning rate, its norms rescale the weights.)"""
    calls = []

    def loss(*args):
        calls.append(1)
        value = sft_loss(*args)
        return value * float("nan") if len(calls) >= first_bad else value

    return mock.patch("rlhfkit.train.sft.sft_loss", loss)


def test_a_diverging_run_stops_with_a_numerical_fault_and_writes_no_final(
    tiny_model_dir, arith_data, tmp_path, caplog
):
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir, *arith_data, max_nonfinite_skips=2, save_every=2, keep_last=5, eval_every=0
    )
    with nan_loss_from_step(5), pytest.raises(NumericalFault) as fault:
        train_sft(cfg, run)
    # steps 5 and 6 skipped, step 7 stops the run, naming the last checkpoint: step 6, whose
    # weights are step 4's, since skipped updates change nothing
    assert "step 7: " in str(fault.value) and "max_nonfinite_skips=2" in str(fault.value)
    assert "step_00000006" in str(fault.value)
    assert caplog.text.count("update skipped") == 2
    assert not run.final.exists()
    saved = [
        load_file(run.checkpoints / f"step_0000000{step}" / "model" / "model.safetensors")
        for step in (4, 6)
    ]
    assert all(torch.equal(saved[0][name], saved[1][name]) for name in saved[0])
    assert all(torch.isfinite(w).all() for w in saved[1].values())


def test_an_update_that_overflows_the_weights_stops_the_run_at_once(
    tiny_model_dir, arith_data, tmp_path
):
    # lr 1e38: the first update's loss and gradient are finite, the weights it makes are not;
    # step 2's loss is NaN, and skipping cannot mend the weights
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    cfg = config(
        tiny_model_dir, *arith_data, lr=1e38, max_grad_norm=0.0, warmup_steps=0, eval_every=0
    )
    with pytest.raises(NumericalFault, match="step 2: .*overflowed them"):
        train_sft(dataclasses.replace(cfg, save_every=0), run)
    run = prepare_run_dir(tmp_path / "saving", resume=False, overwrite=False)
    with pytest.raises(NumericalFault, match="step 1: .*checkpoint not written"):
        train_sft(dataclasses.replace(cfg, save_every=1), run)
    assert not any(run.checkpoints.glob("step_*"))


def _main(argv, capsys, nan_from: int | None = None) -> tuple[int, list[str]]:
    """`rlhfkit *argv`: the exit status and the error lines."""
    with (
        nan_loss_from_step(nan_from) if nan_from else contextlib.nullcontext(),
        mock.patch.object(sys, "argv", ["rlhfkit", *argv]),
    ):
        try:
            main()
            code = 0
        except SystemExit as exit:
            code = exit.code
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    return code, errors


def sft_argv(tiny_model_dir, arith_data, tmp_path, *more) -> list[str]:
    return [
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={arith_data[0]}",
        "max_steps=10",
        "batch_size=8",
        "eval_every=0",
        "sample_every=0",
        "progress=false",
        "--runs-dir",
        str(tmp_path),
        *more,
    ]


def test_the_cli_exits_with_status_3_and_one_line(tiny_model_dir, arith_data, tmp_path, capsys):
    code, errors = _main(sft_argv(tiny_model_dir, arith_data, tmp_path), capsys, nan_from=1)
    assert code == 3
    assert len(errors) == 1 and "non-finite" in errors[0]
    assert not (tmp_path / "sft" / "final").exists()


def test_a_run_that_diverges_before_its_first_checkpoint_keeps_its_logs_and_says_what_works(
    tiny_model_dir, arith_data, tmp_path, capsys
):
    argv = sft_argv(tiny_model_dir, arith_data, tmp_path, "save_every=5")
    code, errors = _main(argv, capsys, nan_from=1)  # steps 1-3 skipped, step 4 stops it
    assert code == 3 and "Last checkpoint: none" in errors[0]
    assert errors[0].endswith("start afresh with --overwrite (no checkpoint to --resume from)")
    # it ran: the directory keeps how it diverged, unlike one refused for bad input
    run = tmp_path / "sft"
    assert [row["step"] for row in read_metrics(run)] == [1, 2, 3]
    assert (run / "log.txt").read_text().count("update skipped") == 3
    # the advice holds: --resume has nothing to take, --overwrite starts it afresh
    code, errors = _main([*argv, "--resume"], capsys)
    assert code == 2 and "nothing to resume" in errors[0] and "--overwrite" in errors[0]
    code, errors = _main([*argv, "--overwrite"], capsys)
    assert code == 0 and errors == []
    assert [row["step"] for row in read_metrics(run)] == list(range(1, 11))


def test_a_run_that_diverges_after_a_checkpoint_is_told_to_continue_from_it(
    tiny_model_dir, arith_data, tmp_path, capsys
):
    argv = sft_argv(tiny_model_dir, arith_data, tmp_path, "save_every=2")
    code, errors = _main(argv, capsys, nan_from=5)  # 5-7 skipped, 8 stops it: checkpoint 6 last
    assert code == 3 and "step_00000006" in errors[0]
    assert errors[0].endswith(
        "lower the learning rate, then continue with --resume-with-changes, or start afresh "
        "with --overwrite"
    )
    code, errors = _main([*argv, "--resume-with-changes", "lr=1e-4"], capsys)
    assert code == 0 and errors == []


@pytest.mark.parametrize("damaged", ["optimizer.pt", "model/model.safetensors", "state.pt"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one_and_still_resumes_exactly(
    tiny_model_dir, arith_data, tmp_path, damaged, caplog
):
    settings = dict(max_steps=6, save_every=2, keep_last=2, eval_every=0, sample_every=0)
    full = prepare_run_dir(tmp_path / "full", resume=False, overwrite=False)
    train_sft(config(tiny_model_dir, *arith_data, **settings), full)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    train_sft(config(tiny_model_dir, *arith_data, **settings), run)
    shutil.rmtree(run.final)  # as if killed after step 4's checkpoint
    path = run.checkpoints / "step_00000004" / damaged
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))

    train_sft(config(tiny_model_dir, *arith_data, **settings), run, resume=True)
    assert "step_00000004 is damaged" in caplog.text
    expected = load_file(full.final / "model.safetensors")
    resumed = load_file(run.final / "model.safetensors")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)


def test_a_resumed_run_does_not_repeat_the_sample_generations(tiny_model_dir, arith_data, tmp_path):
    settings = dict(max_steps=6, save_every=2, keep_last=3, eval_every=0, sample_every=2)
    run = prepare_run_dir(tmp_path / "run", resume=False, overwrite=False)
    train_sft(config(tiny_model_dir, *arith_data, **settings), run)
    # as if killed after step 6's samples, with step 4's checkpoint the newest
    shutil.rmtree(run.final)
    for checkpoint in run.checkpoints.glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > 4:
            shutil.rmtree(checkpoint)
    train_sft(config(tiny_model_dir, *arith_data, **settings), run, resume=True)
    samples = [json.loads(line) for line in (run.root / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [2, 2, 4, 4, 6, 6]
