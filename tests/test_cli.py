"""The command line: every user mistake is one line on stderr and exit status 2."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from rlhfkit import cli
from rlhfkit.data.formats import Format
from rlhfkit.data.loading import load_examples
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.tasks.registry import TASKS, TaskName

GOOD_SFT = {"prompt": "Q: 1 + 1?\nA:", "completion": " 2."}
GOOD_RANKING = {"prompt": "User: Hi\nAssistant:", "responses": [" Good luck!", " Hello."]}


def write_rows(path, rows):
    path.write_text(
        "".join(row if isinstance(row, str) else json.dumps(row) + "\n" for row in rows)
    )
    return path


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`rlhfkit ARGS` in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["rlhfkit", *map(str, args)])
    try:
        cli.main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    "bad_row, fragments",
    [
        ('{"prompt": "Q: 2 + 2?\\nA:", "completion": \n', ["row 2", "malformed JSON"]),
        ({"prompt": "Q: 2 + 2?\nA:"}, ["row 2", "field 'completion'", "missing"]),
        ({"prompt": "Q: 2 + 2?\nA:", "completion": 4}, ["row 2", "field 'completion'", "got int"]),
        (
            {"prompt": "Q: 2 + 2?\nA:", "completion": "  "},
            ["row 2", "field 'completion'", "empty string"],
        ),
        ({"prompt": 7, "completion": " 4."}, ["row 2", "field 'prompt'", "got int"]),
    ],
    ids=["malformed-json", "missing-field", "wrong-type", "empty-text", "wrong-type-prompt"],
)
def test_bad_sft_rows(monkeypatch, capsys, tmp_path, tiny_model_dir, bad_row, fragments):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, bad_row, GOOD_SFT])
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, str(data), *fragments)


@pytest.mark.parametrize(
    "bad_row, fragments",
    [
        (
            {"prompt": "User: Hi\nAssistant:", "responses": [" Only one."]},
            ["row 2", "field 'responses'", "at least two responses, got 1"],
        ),
        (
            {"prompt": "User: Hi\nAssistant:", "responses": [" A.", ""]},
            ["row 2", "field 'responses[1]'", "empty"],
        ),
        (
            {"prompt": "User: Hi\nAssistant:", "responses": [" A.", " B."], "ranks": [1, 0]},
            ["row 2", "field 'ranks'"],
        ),
    ],
    ids=["one-response", "empty-response", "decreasing-ranks"],
)
def test_bad_ranking_rows(monkeypatch, capsys, tmp_path, tiny_model_dir, bad_row, fragments):
    data = write_rows(tmp_path / "rankings.jsonl", [GOOD_RANKING, bad_row])
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "rm",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, str(data), *fragments)


def test_unknown_config_key_names_the_nearest_valid_key(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "sft", "lrr=0.1")
    assert_one_line_error(code, err, "unknown config key 'lrr'", "did you mean 'lr'?")
    code, _, err = run_main(monkeypatch, capsys, "rm", "num_head=2")
    assert_one_line_error(code, err, "'num_head'", "did you mean 'num_heads'?")


@pytest.mark.parametrize("name", [n for n, c in cli.COMMANDS.items() if not c.trains])
def test_a_command_that_trains_nothing_refuses_force_lr(monkeypatch, capsys, name):
    code, _, err = run_main(monkeypatch, capsys, name, "force_lr=true")
    assert_one_line_error(code, err, f"force_lr: rlhfkit {name} trains nothing", "remove it")
    code, _, err = run_main(monkeypatch, capsys, name, "max_nonfinite_skips=7")
    assert_one_line_error(code, err, f"max_nonfinite_skips=7: rlhfkit {name} trains nothing")


def test_critique_refuses_num_prompts_beside_a_prompt_file(monkeypatch, capsys, tmp_path):
    prompts = write_rows(tmp_path / "p.jsonl", [{"prompt": "How do I sleep?"}])
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "critique",
        f"prompts_data={prompts}",
        "num_prompts=3",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, "num_prompts=3 is read only without prompts_data")
    assert not (tmp_path / "runs").exists()  # refused before the run folder


def test_wrong_config_type(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "sft", "max_steps=many")
    assert_one_line_error(code, err, "config key 'max_steps'", "expected int")


def test_missing_model_directory(monkeypatch, capsys, tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT])
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "sft",
        f"model={tmp_path / 'no_model'}",
        f"train_data={data}",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, str(tmp_path / "no_model"), "does not exist")


def test_missing_gguf_model_file(monkeypatch, capsys, tmp_path):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT])
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "sft",
        f"model={tmp_path / 'no_model.gguf'}",
        f"train_data={data}",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, str(tmp_path / "no_model.gguf"), "no such file")
    assert not (tmp_path / "runs" / "sft").exists()


def test_missing_data_file(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={tmp_path / 'nothing.jsonl'}",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, "nothing.jsonl", "no such file")


def test_trainer_needs_model_and_data(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "rm", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "needs model=PATH and train_data=PATH")
    # GRPO draws its prompts from the task when no data is given: only the model is required
    code, _, err = run_main(monkeypatch, capsys, "grpo", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "rlhfkit grpo needs model=PATH")


def test_print_config_shows_the_overrides(monkeypatch, capsys):
    code, out, _ = run_main(
        monkeypatch, capsys, "rm", "--print-config", "lr=1e-4", "objective=process"
    )
    assert code == 0
    config = json.loads(out)
    assert config["lr"] == 1e-4 and config["objective"] == "process" and config["num_heads"] == 1


@pytest.mark.parametrize(
    "settings, refusal",
    [
        (("objective=process", "num_heads=3"), "num_heads=3 with objective=process"),
        (("step_separator=;",), "step_separator=';' separates the steps of objective=process"),
    ],
)
def test_print_config_refuses_a_setting_of_the_other_reward_objective(
    monkeypatch, capsys, settings, refusal
):
    code, _, err = run_main(monkeypatch, capsys, "rm", "--print-config", *settings)
    assert_one_line_error(code, err, refusal)


@pytest.mark.parametrize(
    "command, refusal",
    [("ppo", "PPO needs reward_model=PATH"), ("online-dpo", "labeller=annotator is a built-in")],
)
def test_print_config_of_a_config_not_yet_complete_shows_it_then_says_what_is_missing(
    monkeypatch, capsys, command, refusal
):
    code, out, err = run_main(monkeypatch, capsys, command, "--print-config")
    assert_one_line_error(code, err, refusal)
    assert json.loads(out)["seed"] == 0  # the defaults, as a config file would hold them


def test_ppo_with_a_reward_model_as_its_reward_says_how_the_critic_starts(monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "ppo", "reward=model:rm/final", "--print-config")
    assert_one_line_error(
        code, err, "critic_init=reward_model needs reward_model=PATH", "reward_model=rm/final)"
    )
    code, out, _ = run_main(
        monkeypatch, capsys, "ppo", "reward=model:rm/final", "critic_init=policy", "--print-config"
    )
    assert code == 0 and json.loads(out)["critic_init"] == "policy"


def test_a_jobs_filled_key_is_refused_even_at_its_default(monkeypatch, capsys):
    # sft.seed=0 is SFTConfig's default: only the command line can tell it was set
    code, _, err = run_main(
        monkeypatch, capsys, "pipeline", "sft.seed=0", "seed=1", "--print-config"
    )
    assert_one_line_error(
        code, err, "sft.seed is set by the pipeline from seed=; set seed= instead"
    )


def test_a_jobs_printed_config_leaves_its_filled_keys_out_and_runs_as_it_is(
    monkeypatch, capsys, tmp_path
):
    code, out, _ = run_main(monkeypatch, capsys, "pipeline", "--print-config", "sft.lr=1e-3")
    assert code == 0
    printed = json.loads(out)
    assert printed["sft"]["lr"] == 1e-3 and printed["ppo"]["max_steps"] == 40
    assert not {"seed", "model", "train_data"} & set(printed["sft"])
    assert not {"task", "reward_model", "eval_max_new_tokens"} & set(printed["ppo"])
    path = tmp_path / "demo.yaml"
    path.write_text(out)
    code, again, err = run_main(
        monkeypatch, capsys, "pipeline", "--config", path, "seed=4", "--print-config"
    )
    assert code == 0, err
    assert json.loads(again) == {**printed, "seed": 4}


def test_tasks_lists_the_built_in_tasks(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "tasks")
    assert code == 0
    rows = [line.split(maxsplit=1) for line in out.strip().splitlines()]
    assert [name for name, _ in rows] == sorted(name.value for name in TaskName)
    assert all(description == TASKS[name].description for name, description in rows)


@pytest.mark.parametrize(
    "argv, refusal",
    [
        (["list", "arith"], "rlhfkit tasks list takes no task name (got arith)"),
        (["--out", "foo"], "--out is read by rlhfkit tasks export only"),
        (["list", "--rows", "5"], "--rows is read by rlhfkit tasks export only"),
        (["list", "--seed", "1"], "--seed is read by rlhfkit tasks export only"),
    ],
)
def test_tasks_list_refuses_what_only_export_reads(monkeypatch, capsys, argv, refusal):
    # each was ignored: the tasks listed, exit status 0
    code, out, err = run_main(monkeypatch, capsys, "tasks", *argv)
    assert_one_line_error(code, err, refusal)
    assert not out


def test_tasks_export_writes_to_data_with_a_thousand_rows_by_default(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_main(monkeypatch, capsys, "tasks", "export", "advice")
    assert (
        code == 0 and "seeds the task's generator" in cli._parser().commands["tasks"].format_help()
    )
    rows = (tmp_path / "data" / "advice_prompts.jsonl").read_text().splitlines()
    assert len(rows) == 1000 and out.count("wrote data/") == 2


def test_tasks_export_arith_writes_three_valid_files(monkeypatch, capsys, tmp_path):
    out_dir = tmp_path / "data"
    code, out, _ = run_main(
        monkeypatch, capsys, "tasks", "export", "arith", "--out", out_dir, "--rows", 5
    )
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "arith_prompts.jsonl",
        "arith_sft.jsonl",
        "arith_steps.jsonl",
    ]
    for name, fmt in [("sft", Format.SFT), ("prompts", Format.PROMPT), ("steps", Format.STEPS)]:
        examples = load_examples(out_dir / f"arith_{name}.jsonl", fmt)
        assert len(examples) == 5
    prompt = load_examples(out_dir / "arith_prompts.jsonl", Format.PROMPT)[0]
    assert prompt.answer is not None and prompt.metadata["task"] == "arith"
    assert out.count("wrote ") == 3


def test_tasks_export_advice_has_no_step_file(monkeypatch, capsys, tmp_path):
    code, _, _ = run_main(
        monkeypatch, capsys, "tasks", "export", "advice", "--out", tmp_path, "--rows", 3
    )
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "advice_prompts.jsonl",
        "advice_sft.jsonl",
    ]


def test_tasks_export_errors(monkeypatch, capsys, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "tasks", "export", "chess", "--out", tmp_path)
    assert_one_line_error(code, err, "unknown task 'chess'", "advice, arith")
    code, _, err = run_main(monkeypatch, capsys, "tasks", "export", "--out", tmp_path)
    assert_one_line_error(code, err, "needs a task name")
    for rows in ("0", "-5"):  # wrote three empty files
        code, _, err = run_main(monkeypatch, capsys, "tasks", "export", "arith", "--rows", rows)
        assert_one_line_error(code, err, f"--rows must be at least 1, got {rows}")
    a_file = tmp_path / "corpus.jsonl"
    a_file.write_text("{}\n")
    for out in (a_file, a_file / "below"):  # was a FileExistsError / NotADirectoryError traceback
        code, _, err = run_main(monkeypatch, capsys, "tasks", "export", "arith", "--out", out)
        assert_one_line_error(code, err, f"--out {out}: cannot write there")
    assert a_file.read_text() == "{}\n" and sorted(tmp_path.iterdir()) == [a_file]


def test_real_process_prints_one_line_and_exits_2(tmp_path, tiny_model_dir):
    """The same through `python -m rlhfkit`: nothing else (no library warning, no traceback)
    reaches stderr."""
    data = write_rows(
        tmp_path / "rankings.jsonl",
        [GOOD_RANKING, {"prompt": "User: Hi\nAssistant:", "responses": [" Only one."]}],
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit",
            "rm",
            f"model={tiny_model_dir}",
            f"train_data={data}",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert_one_line_error(result.returncode, result.stderr, f"{data}: row 2: field 'responses'")


def test_a_run_that_failed_on_bad_input_can_be_started_again(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, {"prompt": "Q: 2 + 2?\nA:"}])
    args = [
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "max_steps=1",
        "progress=false",
        "tensorboard=false",
        "sample_every=0",
        "save_every=0",
        "--runs-dir",
        tmp_path / "runs",
    ]
    code, _, _ = run_main(monkeypatch, capsys, *args)
    assert code == 2
    write_rows(data, [GOOD_SFT, GOOD_SFT])  # the user fixes the file and runs the same command
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err


def test_overrides_on_both_sides_of_an_option(monkeypatch, capsys):
    code, out, err = run_main(
        monkeypatch, capsys, "sft", "lr=0.5", "--name", "x", "max_steps=3", "--print-config"
    )
    assert code == 0, err
    assert json.loads(out)["lr"] == 0.5 and json.loads(out)["max_steps"] == 3


@pytest.mark.parametrize("command", ["sft", "pipeline"])
def test_a_second_config_file_is_refused_not_dropped(monkeypatch, capsys, tmp_path, command):
    # argparse would keep the last --config: the first file's settings would be lost unsaid
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("seed: 5\n")
    second.write_text("seed: 6\n")
    code, out, err = run_main(
        monkeypatch, capsys, command, "--config", first, f"--config={second}", "--print-config"
    )
    assert code == 2 and out == ""
    assert f"error: --config given twice ({first}, then {second}): one config file" in err
    code, out, err = run_main(monkeypatch, capsys, command, "--config", first, "--print-config")
    assert code == 0 and json.loads(out)["seed"] == 5, err


@pytest.mark.parametrize(
    "command, needed",
    [
        ("grpo", []),
        ("rloo", []),
        ("ppo", ["reward_model=rm"]),
        ("raft", []),
        ("online-dpo", ["task=advice"]),
        ("dpo", []),
    ],
)
def test_lora_dropout_that_disable_dropout_turns_off_is_refused(
    monkeypatch, capsys, command, needed
):
    command = [command, *needed, "lora_r=8"]
    code, _, err = run_main(monkeypatch, capsys, *command, "--print-config", "lora_dropout=0.05")
    assert_one_line_error(code, err, "lora_dropout=0.05 with disable_dropout=true", "set ")
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        *command,
        "--print-config",
        "lora_dropout=0.05",
        "disable_dropout=false",
    )
    assert code == 0 and json.loads(out)["lora_dropout"] == 0.05
    # one layer name on the command line is that name, a list the names
    code, out, _ = run_main(
        monkeypatch, capsys, *command, "--print-config", "lora_target_modules=q_proj"
    )
    assert json.loads(out)["lora_target_modules"] == "q_proj"
    code, out, _ = run_main(
        monkeypatch, capsys, *command, "--print-config", "lora_target_modules=[q_proj,v_proj]"
    )
    assert json.loads(out)["lora_target_modules"] == ["q_proj", "v_proj"]


def test_raft_command_trains_and_reports_the_held_out_score(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    code, out, _ = run_main(
        monkeypatch, capsys, "raft", "--print-config", "mode=online_rft", "wrong_coef=0"
    )
    printed = json.loads(out)
    assert code == 0 and printed["mode"] == "online_rft" and printed["wrong_coef"] == 0
    code, _, err = run_main(
        monkeypatch, capsys, "raft", "--print-config", "mode=online_rft", "selection=top_fraction"
    )
    assert_one_line_error(code, err, "selection=top_fraction is read by mode=raft only")
    code, _, err = run_main(monkeypatch, capsys, "raft", "mode=sft", "--print-config")
    assert_one_line_error(code, err, "config key 'mode'", "'raft', 'online_rft'")
    code, _, err = run_main(monkeypatch, capsys, "raft", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "rlhfkit raft needs model=PATH")
    code, out, err = run_main(
        monkeypatch, capsys, *tiny_raft_args(tiny_model_dir, tmp_path, "max_steps=1")
    )
    assert code == 0, err
    assert (
        "held-out arith at the start: accuracy " in out
        and "held-out arith after step 1: accuracy " in out
        and f"model saved to {tmp_path / 'runs' / 'raft' / 'final'}" in out
    )


def tiny_raft_args(model, tmp_path, *settings) -> list:
    """A raft run on arith small enough for a CLI test, with `settings` added."""
    sizes = ["prompts_per_round=2", "samples_per_prompt=2", "max_new_tokens=4", "eval_prompts=2"]
    sizes += ["eval_max_new_tokens=4", "train_prompts=16", "progress=false", "tensorboard=false"]
    return [
        "raft",
        f"model={model}",
        "task=arith",
        *settings,
        *sizes,
        "--runs-dir",
        tmp_path / "runs",
    ]


def test_dpo_command_trains_on_rankings_and_rejects_unsupported_settings(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    code, out, _ = run_main(
        monkeypatch, capsys, "dpo", "--print-config", "loss=plackett_luce", "beta=0.5"
    )
    assert (
        code == 0 and json.loads(out)["loss"] == "plackett_luce" and json.loads(out)["beta"] == 0.5
    )
    code, _, err = run_main(monkeypatch, capsys, "dpo", "--runs-dir", tmp_path / "runs")
    assert_one_line_error(code, err, "rlhfkit dpo needs model=PATH and train_data=PATH")
    data = write_rows(tmp_path / "rankings.jsonl", [GOOD_RANKING, GOOD_RANKING])
    args = [
        "dpo",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    ]
    code, _, err = run_main(monkeypatch, capsys, *args, "loss=ipo", "label_smoothing=0.1")
    assert_one_line_error(code, err, "label_smoothing=0.1", "set label_smoothing=0 or loss=sigmoid")
    code, out, err = run_main(
        monkeypatch, capsys, *args, "max_steps=1", f"eval_data={data}", "precompute_ref=true"
    )
    assert code == 0, err
    # one small step on this very pair already orders it the right way
    assert "held-out preference accuracy: 100.0%" in out
    assert f"model saved to {tmp_path / 'runs' / 'dpo' / 'final'}" in out
    # the data report is printed, and kept with its time in the run's log
    report = f"preference data {data}: "
    assert report in out
    assert (
        f"INFO rlhfkit.train.dpo: {report}" in (tmp_path / "runs" / "dpo" / "log.txt").read_text()
    )
    # and where it came from: one line per start (the refused start above left none)
    [start] = read_metrics(tmp_path / "runs" / "dpo" / "starts.jsonl")
    assert start["command"].startswith(f"rlhfkit dpo model={tiny_model_dir} train_data={data} ")
    assert start["command"].endswith(f"max_steps=1 eval_data={data} precompute_ref=true")


def test_a_resumed_policy_run_prints_the_runs_own_start(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    # the start was evaluated by the process that began the run; a resumed one evaluates
    # after its steps only, and printed its first of those as the start
    args = tiny_raft_args(tiny_model_dir, tmp_path, "max_steps=2", "save_every=1")
    code, out, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    start = next(line for line in out.splitlines() if " at the start: " in line)
    code, out, err = run_main(monkeypatch, capsys, *args, "--resume-with-changes", "max_steps=3")
    assert code == 0, err
    held_out = [line for line in out.splitlines() if line.startswith("held-out ")]
    assert held_out[0] == start and held_out[1].startswith("held-out arith after step 3: ")
    assert len(held_out) == 2


def test_online_dpo_command_trains_and_reports_the_held_out_score(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    code, out, _ = run_main(
        monkeypatch,
        capsys,
        "online-dpo",
        "--print-config",
        "regime=iterative",
        "refresh_every=4",
        "label_budget=1000",
        "task=advice",
    )
    config = json.loads(out)
    assert code == 0 and config["regime"] == "iterative" and config["refresh_every"] == 4
    assert (
        config["label_budget"] == 1000
        and config["labeller"] == "annotator"
        and config["task"] == "advice"
    )
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "online-dpo",
        "regime=hybrid",
        "model=m",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert_one_line_error(code, err, "regime=hybrid needs offline_data")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "online-dpo",
        f"model={tiny_model_dir}",
        "task=advice",
        "max_steps=1",
        "prompts_per_step=2",
        "max_new_tokens=4",
        "eval_prompts=2",
        "eval_max_new_tokens=4",
        "train_prompts=16",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert code == 0, err
    assert "held-out advice at the start: gold_score " in out
    assert "held-out advice after step 1: gold_score " in out
    assert f"model saved to {tmp_path / 'runs' / 'online-dpo' / 'final'}" in out


def test_judge_command_trains_a_judge_and_writes_preferences_and_agreement(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    prompt = "User: How can I sleep better at night?\nAssistant:"
    pair = {
        "prompt": prompt,
        "chosen": " Keep your bedroom dark and cool.",
        "rejected": " That is a silly question.",
    }
    pairs = write_rows(tmp_path / "pairs.jsonl", [pair, pair])
    runs = tmp_path / "runs"
    code, _, err = run_main(
        monkeypatch, capsys, "judge", f"model={tiny_model_dir}", "--runs-dir", runs
    )
    assert_one_line_error(code, err, "rlhfkit judge needs pairs=PATH")
    assert not (runs / "judge").exists()  # a failed fresh run leaves nothing behind
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "judge",
        f"model={tiny_model_dir}",
        f"train_pairs={pairs}",
        f"pairs={pairs}",
        "task=advice",
        "sft.max_steps=2",
        "sft.progress=false",
        "sft.tensorboard=false",
        "--runs-dir",
        runs,
    )
    assert code == 0, err
    report = json.loads((runs / "judge" / "agreement.json").read_text())
    assert (
        report["pairs"] == 2
        and report["labels_vs_gold"] == 1.0
        and report["gold_ordered_pairs"] == 2
    )
    assert (runs / "judge" / "judge" / "final" / "config.json").is_file()
    assert (
        len(load_examples(runs / "judge" / "preferences.jsonl", Format.PREFERENCE))
        == report["preference_rows"]
    )
    assert f"written to {runs / 'judge'}" in out
    code, _, err = run_main(
        monkeypatch, capsys, "judge", f"pairs={pairs}", "--resume", "--runs-dir", runs
    )
    assert_one_line_error(code, err, "rlhfkit judge does not resume")


def test_critique_command_writes_sft_rows(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, out, _ = run_main(monkeypatch, capsys, "critique", "--print-config")
    assert (
        code == 0
        and json.loads(out)["task"] == "advice"
        and json.loads(out)["revise_temperature"] == 0.0
    )
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "critique",
        f"model={tiny_model_dir}",
        "num_prompts=2",
        "max_new_tokens=4",
        "--name",
        "cai",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert code == 0, err
    assert len(load_examples(tmp_path / "runs" / "cai" / "sft.jsonl", Format.SFT)) == 2
    assert json.loads((tmp_path / "runs" / "cai" / "report.json").read_text())["prompts"] == 2
    assert not (
        tmp_path / "runs" / "cai" / "preferences.jsonl"
    ).exists()  # no judge, no preference rows


def perturbed_copy(model_dir, out):
    """Another policy: the tiny model with its weights moved a little, saved with its tokenizer."""
    import torch

    from rlhfkit.models.loading import load_causal_lm, load_tokenizer

    other = load_causal_lm(model_dir)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    other.save_pretrained(out)
    load_tokenizer(model_dir).save_pretrained(out)
    return out


def test_eval_command_measures_a_checkpoint_against_a_baseline(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    perturbed_copy(tiny_model_dir, tmp_path / "other")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{tmp_path / 'other'}]",
        f"baseline={tiny_model_dir}",
        "task=arith",
        "num_prompts=4",
        "samples_per_prompt=2",
        "max_new_tokens=8",
        "--runs-dir",
        tmp_path,
        "--name",
        "ev",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "ev" / "eval.json").read_text())
    theirs, ours = result["models"][str(tiny_model_dir)], result["models"][str(tmp_path / "other")]
    assert "win_rate_greedy" not in theirs and ours["win_rate_sampled_n"] == 8
    assert (
        ours["kl_k1_per_sequence_n"] == 8 and ours["kl_k3_per_token"] > 0
    )  # KL to the baseline, not to itself
    assert (
        "pass@2" in ours and "maj@2" in ours and "win rate, sampled" in out and "eval.json" in out
    )
    # every scored answer, from which the numbers recompute
    text = (tmp_path / "ev" / "samples.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    mine = [r for r in rows if r["model"] == str(tmp_path / "other") and r["kind"] == "sampled"]
    assert len(rows) == 2 * (4 + 8) and len(mine) == 8
    assert sum(r["gold"] for r in mine) / 8 == pytest.approx(ours["gold_sampled"])
    assert sum(r["kl_k1"] for r in mine) / 8 == pytest.approx(ours["kl_k1_per_sequence"])
    assert sum(r["tokens"] for r in mine) / 8 == pytest.approx(ours["length_tokens"])
    assert sum(r["correct"] for r in mine) / 8 == pytest.approx(ours["pass@1"])
    # the numbers name what made them: the command, the code and the machine
    assert result["started"]["command"].startswith("rlhfkit eval 'models=[")  # as a shell reads it
    report = (tmp_path / "ev" / "report.md").read_text()
    assert f"| made by | rlhfkit {result['started']['rlhfkit']}" in report


def test_eval_command_errors_are_one_line(monkeypatch, capsys, tmp_path, tiny_model_dir):
    code, _, err = run_main(monkeypatch, capsys, "eval", "--runs-dir", tmp_path)
    assert_one_line_error(code, err, "models=[PATH,...]")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{tiny_model_dir}/.]",  # the baseline, written otherwise
        "judge=reward_model",
        "--runs-dir",
        tmp_path,
    )
    assert_one_line_error(code, err, "judge=reward_model needs reward_model=PATH")
    code, _, err = run_main(
        monkeypatch, capsys, "eval", f"models=[{tmp_path / 'nothing'}]", "--runs-dir", tmp_path
    )
    assert_one_line_error(code, err, "not a saved model directory")


def test_eval_command_checks_every_model_before_sampling_any(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    # a directory with a config and no weights, last in the list: refused before the baseline
    # and the first model are sampled, not after them
    (tmp_path / "no_weights").mkdir()
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "no_weights")

    def sampled(*args, **kwargs):
        raise AssertionError("a model was sampled before every model was checked")

    monkeypatch.setattr("rlhfkit.eval.run_eval.evaluate_model", sampled)
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{tiny_model_dir},{tmp_path / 'no_weights'}]",
        f"baseline={tiny_model_dir}",
        "task=arith",
        "--runs-dir",
        tmp_path,
    )
    assert_one_line_error(code, err, f"{tmp_path / 'no_weights'}: no weights")


def test_eval_command_judged_by_a_reward_model_or_an_ai_judge(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward import RewardModel

    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    heldout = write_rows(
        tmp_path / "heldout.jsonl", [GOOD_RANKING, {**GOOD_RANKING, "responses": [" Hi.", " Go."]}]
    )
    common = [
        f"baseline={tiny_model_dir}",
        "task=advice",
        "num_prompts=3",
        "samples_per_prompt=2",
        "max_new_tokens=6",
        "--runs-dir",
        tmp_path,
    ]
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{tiny_model_dir}/.]",  # the baseline, written otherwise
        "judge=reward_model",
        f"reward_model={tmp_path / 'rm'}",
        f"heldout_pairs={heldout}",
        "--name",
        "by_rm",
        *common,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "by_rm" / "eval.json").read_text())
    assert result["judge"] == "reward_model" and result["reward_model"]["pairs"] == 2
    assert 0.0 <= result["reward_model"]["accuracy"] <= 1.0 and "reward model on" in out
    # the baseline listed among the models is measured once, with no win rate against itself
    assert list(result["models"]) == [str(tiny_model_dir)]
    theirs = result["models"][str(tiny_model_dir)]
    assert theirs["proxy_sampled_n"] == 6 and "win_rate_greedy" not in theirs

    other = perturbed_copy(tiny_model_dir, tmp_path / "other")
    from rlhfkit.feedback import judge

    passes, prob_a = [], judge._prob_a
    monkeypatch.setattr(
        judge, "_prob_a", lambda m, t, ids, *a: passes.append(len(ids)) or prob_a(m, t, ids, *a)
    )
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{other}]",
        "judge=ai",
        f"judge_model={tiny_model_dir}",
        "batch_size=4",
        "--name",
        "by_ai",
        *common,
    )
    assert code == 0, err
    assert max(passes) == 4 and sum(passes) == 2 * (3 + 6)  # batch_size comparisons a pass
    result = json.loads((tmp_path / "by_ai" / "eval.json").read_text())
    ours = result["models"][str(other)]
    assert (
        result["judge"] == "ai"
        and ours["win_rate_greedy_n"] == 3
        and ours["win_rate_sampled_n"] == 6
    )
    assert 0.0 <= ours["judge_flip_rate_sampled"] <= 1.0


def test_eval_reads_the_held_out_pairs_before_sampling_any_model(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    """A bad row in heldout_pairs stops the run before the models are sampled (minutes on a
    real model), not after."""
    from rlhfkit.eval import run_eval
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.reward import RewardModel

    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    bad = write_rows(tmp_path / "heldout.jsonl", [GOOD_RANKING, {**GOOD_RANKING, "responses": 5}])

    def no_sampling(*args, **kwargs):
        raise AssertionError("a model was sampled before the held-out pairs were read")

    monkeypatch.setattr(run_eval, "evaluate_model", no_sampling)
    capsys.readouterr()  # the set-up's own loading bars
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{tiny_model_dir}]",
        f"baseline={tiny_model_dir}",
        "task=advice",
        f"reward_model={tmp_path / 'rm'}",
        f"heldout_pairs={bad}",
        "--runs-dir",
        tmp_path,
    )
    assert_one_line_error(code, err, f"{bad}: row 2: field 'responses'")


def test_eval_on_a_users_own_task_is_judged_by_their_reward_function(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    """No built-in task: the user's prompts and reward function give the same table (gold score,
    win rates, KL, hacking signs); the function's scores are the gold scores."""
    prompts = write_rows(
        tmp_path / "mine.jsonl",
        [{"prompt": f"Tell me about item {i}.", "topic": "items"} for i in range(3)],
    )
    judge = tmp_path / "judge.py"
    judge.write_text(
        "def vowels(prompts, responses, topic, **kwargs):\n"
        "    assert set(topic) == {'items'}  # the prompt file's own columns arrive\n"
        "    return [float(sum(c in 'aeiou' for c in r)) for r in responses]\n"
    )
    other = perturbed_copy(tiny_model_dir, tmp_path / "other")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "eval",
        f"models=[{other}]",
        f"baseline={tiny_model_dir}",
        "task=null",
        f"prompts={prompts}",
        f"judge={judge}:vowels",
        "samples_per_prompt=2",
        "max_new_tokens=6",
        "--runs-dir",
        tmp_path,
        "--name",
        "mine",
    )
    assert code == 0, err
    result = json.loads((tmp_path / "mine" / "eval.json").read_text())
    ours = result["models"][str(other)]
    assert result["task"] is None and result["judge"] == f"{judge}:vowels"
    assert ours["win_rate_greedy_n"] == 3 and ours["win_rate_sampled_n"] == 6
    assert ours["gold_sampled"] >= 0 and ours["greedy_gold_score"] >= 0
    assert "kl_k3_per_token" in ours and "repetition" in ours and "pass@1" not in ours
    assert "mine.jsonl: win rates" in out and "judged" in out


def test_eval_without_a_task_needs_prompts_and_a_reward_source_judge(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    common = [f"models=[{tiny_model_dir}]", "task=null", "--runs-dir", tmp_path]
    code, _, err = run_main(monkeypatch, capsys, "eval", *common, "judge=gold")
    assert_one_line_error(code, err, "judge=gold needs a task", "model:PATH for a reward model")
    prompts = write_rows(tmp_path / "prompts.jsonl", [{"prompt": "Say hi."}])
    for named in ("reward_model", "ai"):  # a named judge is refused without a task, prompts or not
        code, _, err = run_main(
            monkeypatch, capsys, "eval", *common, f"judge={named}", f"prompts={prompts}"
        )
        assert_one_line_error(code, err, f"judge={named} needs a task")
    code, _, err = run_main(monkeypatch, capsys, "eval", *common, "judge=model:somewhere")
    assert_one_line_error(code, err, "without a task needs prompts=FILE")
    code, _, err = run_main(monkeypatch, capsys, "eval", *common, "judge=no_such_judge")
    assert_one_line_error(code, err, "no_such_judge")


def test_ai_win_rate_counts_a_verdict_of_one_half_as_a_tie():
    from rlhfkit.eval.run_eval import ai_win_rate

    rate = ai_win_rate([0.9, 0.5, 0.2, 0.7])
    assert (rate.wins, rate.ties, rate.losses) == (2, 1, 1) and rate.rate == 2.5 / 4


def test_rloo_command_trains_in_file_order_and_reports_the_held_out_score(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    code, out, _ = run_main(
        monkeypatch, capsys, "rloo", "--print-config", "shuffle=false", "group_size=4"
    )
    assert code == 0 and json.loads(out)["shuffle"] is False and json.loads(out)["group_size"] == 4
    # 16 prompts x 3 samples = 48 rows, which mini-batches of 64 do not divide: the run would
    # refuse it, and so does --print-config
    code, _, err = run_main(monkeypatch, capsys, "rloo", "--print-config", "group_size=3")
    assert_one_line_error(code, err, "mini_batch_size=64 does not divide the rollout")
    code, out, err = run_main(
        monkeypatch,
        capsys,
        "rloo",
        f"model={tiny_model_dir}",
        "task=arith",
        "max_steps=1",
        "prompts_per_step=2",
        "group_size=2",
        "mini_batch_size=4",
        "max_new_tokens=4",
        "eval_prompts=2",
        "eval_max_new_tokens=4",
        "train_prompts=16",
        "eval_every=0",
        "progress=false",
        "tensorboard=false",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert code == 0, err
    assert (
        "held-out arith at the start: accuracy " in out
        and "held-out arith after step 1: accuracy " in out
        and f"model saved to {tmp_path / 'runs' / 'rloo' / 'final'}" in out
    )


def sft_args(tmp_path, tiny_model_dir, data, *extra):
    """A two-step SFT run of the tiny model with a checkpoint after each step."""
    return [
        "sft",
        f"model={tiny_model_dir}",
        f"train_data={data}",
        "max_steps=2",
        "save_every=1",
        "progress=false",
        "tensorboard=false",
        "sample_every=0",
        "--runs-dir",
        tmp_path / "runs",
        *extra,
    ]


def files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_overwrite_with_a_mistyped_data_file_keeps_the_old_run(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT])
    code, _, err = run_main(monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data))
    assert code == 0, err
    before = files_of(tmp_path / "runs" / "sft")
    assert "final/model.safetensors" in before
    typo = tmp_path / "trian.jsonl"
    code, _, err = run_main(
        monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, typo, "lr=0.5", "--overwrite")
    )
    assert_one_line_error(code, err, "trian.jsonl", "no such file")
    assert files_of(tmp_path / "runs" / "sft") == before  # config.yaml and final/ untouched
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["sft"]
    # with good data the overwrite goes through, and the replaced run is gone
    code, _, err = run_main(
        monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data, "lr=0.5", "--overwrite")
    )
    assert code == 0, err
    assert "lr: 0.5" in (tmp_path / "runs" / "sft" / "config.yaml").read_text()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["sft"]


def test_a_run_name_cannot_reach_outside_the_runs_dir(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT])
    code, _, err = run_main(
        monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data, "--name", "../x")
    )
    assert_one_line_error(code, err, "--name '../x' is not a plain run name")
    assert not (tmp_path / "x").exists() and not (tmp_path / "runs").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "config.yaml").write_text("mine: true\n")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        *sft_args(tmp_path, tiny_model_dir, data, "--name", str(precious), "--overwrite"),
    )
    assert_one_line_error(code, err, f"--name '{precious}' is not a plain run name")
    assert (precious / "config.yaml").read_text() == "mine: true\n"


def test_runs_dir_that_is_a_file_is_a_one_line_error(monkeypatch, capsys, tmp_path, tiny_model_dir):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT])
    args = sft_args(tmp_path, tiny_model_dir, data)
    args[args.index("--runs-dir") + 1] = data
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert_one_line_error(code, err, f"--runs-dir {data} is a file, not a directory")


def test_resume_with_a_changed_config_is_refused_unless_asked_for(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT])
    code, _, err = run_main(monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data))
    assert code == 0, err
    config = tmp_path / "runs" / "sft" / "config.yaml"
    saved = config.read_text()
    longer = sft_args(tmp_path, tiny_model_dir, data, "max_steps=3", "lr=0.002")
    code, _, err = run_main(monkeypatch, capsys, *longer, "--resume")
    assert_one_line_error(
        code, err, "config differs", "lr: 0.001 -> 0.002", "max_steps: 2 -> 3", "--resume-with"
    )
    assert config.read_text() == saved
    # a change the run itself refuses is not saved: the original command still resumes
    missing = sft_args(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl")
    code, _, err = run_main(monkeypatch, capsys, *missing, "--resume-with-changes")
    assert_one_line_error(code, err, "missing.jsonl: no such file")
    assert config.read_text() == saved
    code, _, err = run_main(
        monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data), "--resume"
    )
    assert code == 0, err
    code, _, err = run_main(monkeypatch, capsys, *longer, "--resume-with-changes")
    assert code == 0, err
    text = config.read_text()
    assert "lr: 0.002" in text and "max_steps: 3" in text
    assert text.splitlines()[-1].endswith("with changes: max_steps: 2 -> 3; lr: 0.001 -> 0.002")
    rows = [json.loads(line) for line in (config.parent / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]  # it continued, it did not start again


def test_resume_without_keys_takes_the_runs_own_settings_and_says_where_it_starts(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT])
    code, _, err = run_main(monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data))
    assert code == 0, err
    root = tmp_path / "runs" / "sft"
    where = ["--runs-dir", tmp_path / "runs", "--name", "sft"]
    code, out, err = run_main(monkeypatch, capsys, "sft", *where, "--resume")
    assert code == 0, err
    assert f"resuming with the settings of {root / 'config.yaml'}" in out
    assert f"resuming from {root / 'checkpoints' / 'step_00000001'}: step 1 of 2 done" in out
    assert f"warning: the run had finished: its final model {root / 'final'} will be" in err
    # one changed key on top of the run's settings
    code, out, err = run_main(
        monkeypatch, capsys, "sft", *where, "--resume-with-changes", "max_steps=3"
    )
    assert code == 0, err
    assert "step 1 of 3 done" in out  # no checkpoint after the last step: the final model
    rows = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]


def test_resume_of_a_missing_or_finished_run_without_checkpoints_says_which(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    where = ["--runs-dir", tmp_path / "runs", "--name", "nope"]
    code, _, err = run_main(monkeypatch, capsys, "sft", *where, "--resume")
    assert_one_line_error(code, err, f"there is no run directory {tmp_path / 'runs' / 'nope'}")
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT])
    args = sft_args(tmp_path, tiny_model_dir, data, "save_every=0")
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    final = tmp_path / "runs" / "sft" / "final"
    code, _, err = run_main(monkeypatch, capsys, *args, "--resume")
    assert_one_line_error(
        code, err, "the run has finished, with no checkpoint kept", f"model={final}"
    )


def write_lock(root, pid):
    """The lock file a run holding `root` on this host writes: its pid, host and a token."""
    lock = root / "run.lock"
    lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "token": "t"}) + "\n")
    return lock


def test_a_run_in_use_is_refused_and_a_dead_runs_lock_is_taken_over(
    monkeypatch, capsys, tmp_path, tiny_model_dir
):
    data = write_rows(tmp_path / "train.jsonl", [GOOD_SFT, GOOD_SFT])
    args = sft_args(tmp_path, tiny_model_dir, data)
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 0, err
    root = tmp_path / "runs" / "sft"
    checkpoints = files_of(root / "checkpoints")
    lock = write_lock(root, os.getpid())  # a live process (this one) is resuming it right now
    for flag in ("--resume", "--overwrite"):
        code, _, err = run_main(monkeypatch, capsys, *args, flag)
        assert_one_line_error(code, err, f"run {root} is in use by process {os.getpid()}")
    assert files_of(root / "checkpoints") == checkpoints
    lock.unlink()
    # a run killed outright leaves its lock behind: the next start takes it over and says so
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    for flag in ("--resume", "--overwrite"):  # the replacing run says so too
        write_lock(root, child.pid)
        code, _, err = run_main(monkeypatch, capsys, *args, flag)
        assert code == 0, err
        warnings = err.strip().splitlines()
        assert warnings[0] == (
            f"warning: run {root}: taking over its lock from process {child.pid}, "
            "which is no longer running"
        )
        if flag == "--resume":  # the run had finished: resuming it says what that does
            assert warnings[1:] == [
                f"warning: the run had finished: its final model {root / 'final'} will be replaced"
            ]
        else:
            assert len(warnings) == 1
        assert not lock.exists()  # released at the end


@pytest.mark.parametrize(
    "command, reason",
    [
        ("frontier", "its rankings"),
        ("judge", "its judge training"),
        ("critique", "its generation"),
        ("eval", "its sampling"),
        ("sample", "it writes its candidates file"),
    ],
)
def test_a_command_refused_under_torchrun_says_why(command, reason):
    torchrun = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    with pytest.raises(cli.RlhfkitError, match=f"does not run under torchrun yet \\({reason}"):
        cli.run([command], env=torchrun)


def test_resume_by_another_command_is_refused(monkeypatch, capsys, tmp_path, tiny_model_dir):
    # an RLOO run's config reads as a GRPO config (RLOO's keys are GRPO's, less some): `grpo
    # --resume` would have continued RLOO's checkpoint as GRPO; any two commands alike
    data = write_rows(tmp_path / "sft.jsonl", [GOOD_SFT] * 4)
    code, _, err = run_main(monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data))
    assert code == 0, err
    root = tmp_path / "runs" / "sft"
    args = [f"model={tiny_model_dir}", f"train_data={data}", "--runs-dir", tmp_path / "runs"]
    code, _, err = run_main(monkeypatch, capsys, "rm", *args, "--name", "sft", "--resume")
    assert_one_line_error(code, err, f"{root} is a run of rlhfkit sft, not rlhfkit rm")
    where = ["--runs-dir", tmp_path / "runs", "--name", "sft"]  # no keys: the run's own
    code, _, err = run_main(monkeypatch, capsys, "rm", *where, "--resume")
    assert_one_line_error(code, err, f"{root} is a run of rlhfkit sft, not rlhfkit rm")
    # the run's own command resumes it (nothing left to do: its two steps are done)
    code, _, err = run_main(
        monkeypatch, capsys, *sft_args(tmp_path, tiny_model_dir, data), "--resume"
    )
    assert code == 0, err


def test_a_usage_error_under_torchrun_is_printed_by_rank_0_alone(capsys):
    for rank, printed in (("1", False), ("0", True)):
        env = {"WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}
        with pytest.raises(SystemExit) as stop:
            cli.run(["sft", "--bogus"], env=env)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert ("unrecognized arguments: --bogus" in err) is printed, (rank, err)


def test_sigterm_is_a_clean_stop_during_the_run_and_the_default_after_it(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(cli, "run", lambda argv: seen.append(signal.getsignal(signal.SIGTERM)))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert run_main(monkeypatch, capsys, "tasks", "list")[0] == 0
        assert seen == [cli._raise_terminated]  # during the run: Terminated, one line
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # teardown: no traceback
    finally:
        signal.signal(signal.SIGTERM, previous)
