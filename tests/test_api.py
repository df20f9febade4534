"""`rlhfkit.run`: a command from Python, with settings as Python values, data rows in memory and
reward functions as objects, in the run directory the command line would make."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pandas
import pytest
import transformers
import yaml

import rlhfkit
from rlhfkit.api import call_text, quiet_libraries
from rlhfkit.rewards.builder import check_spec

SETTINGS = dict(progress=False, tensorboard=False, save_every=0)


def sft_rows(count: int = 40) -> list[dict]:
    return [
        {"prompt": f"{a} + {b} =", "completion": f" {a + b}"} for a in range(8) for b in range(5)
    ][:count]


def prompt_rows() -> list[dict]:
    return [{"prompt": f"{a} + {b} =", "answer": str(a + b)} for a in range(8) for b in range(8)]


def grpo_settings(model) -> dict:
    return dict(
        model=str(model),
        train_data=prompt_rows(),
        max_steps=2,
        prompts_per_step=2,
        group_size=4,
        mini_batch_size=8,
        max_new_tokens=4,
        eval_every=-1,
        **SETTINGS,
    )


@pytest.mark.parametrize("as_dataset", ["list", "dataset", "data_frame"])
def test_sft_trains_on_rows_in_memory_written_into_the_run(tiny_model_dir, tmp_path, as_dataset):
    rows = sft_rows()
    data = {
        "list": rows,
        "dataset": datasets.Dataset.from_list(rows),
        "data_frame": pandas.DataFrame(rows),
    }[as_dataset]
    run_dir = tmp_path / "sft"
    result = rlhfkit.run(
        "sft", run_dir, model=tiny_model_dir, train_data=data, max_steps=2, batch_size=4, **SETTINGS
    )
    assert (run_dir / "final" / "config.json").is_file() and result.model_dir == run_dir / "final"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    written = config["train_data"]
    assert written.startswith(str(run_dir / "inputs" / "train_data-"))
    assert datasets.load_dataset("json", data_files=written)["train"].to_list() == rows
    assert [m["step"] for m in rlhfkit.read_metrics(run_dir)] == [1, 2]


def test_a_bad_row_in_memory_is_named_by_its_setting_not_by_the_file_of_a_failed_run(
    tiny_model_dir, tmp_path
):
    # the run and its inputs/ file are gone once it fails: the message named that file
    rows = [*sft_rows(3), {"prompt": "1 + 1 ="}]
    with pytest.raises(rlhfkit.RlhfkitError) as caught:
        rlhfkit.run("sft", tmp_path / "sft", model=tiny_model_dir, train_data=rows, **SETTINGS)
    assert str(caught.value).startswith(
        "setting 'train_data' (rows in memory): row 4: field 'completion': missing"
    )
    assert not (tmp_path / "sft").exists()


def test_a_row_in_memory_that_is_not_valid_unicode_is_named_as_a_bad_row(tiny_model_dir, tmp_path):
    rows = [*sft_rows(3), {"prompt": "1 + 1 =\ud800", "completion": " 2"}]
    with pytest.raises(rlhfkit.RlhfkitError) as caught:
        rlhfkit.run("sft", tmp_path / "sft", model=tiny_model_dir, train_data=rows, **SETTINGS)
    assert str(caught.value).startswith(
        "setting 'train_data' (rows in memory): row 4: field 'prompt': not valid Unicode"
    )
    assert not (tmp_path / "sft").exists()


def test_the_same_rows_name_the_same_file_and_other_rows_another():
    from rlhfkit.api import python_values

    def written(rows) -> str:
        return python_values({"train_data": rows}, Path("inputs"), {})["train_data"]

    assert written(sft_rows()) == written(sft_rows())
    assert written(sft_rows()) != written(sft_rows(39))


def test_a_reward_function_object_scores_the_samples_in_this_process(tiny_model_dir, tmp_path):
    calls = []

    def brevity(prompts, responses, **columns):
        calls.append(len(responses))
        return [-len(response) / 10 for response in responses]

    settings = grpo_settings(tiny_model_dir)
    settings["reward"] = [brevity, (0.5, lambda prompts, responses, **c: [0.0] * len(responses))]
    rlhfkit.run("grpo", tmp_path / "grpo", **settings)
    assert calls == [8, 8]  # both steps' 2 prompts x 4 samples, in this very function
    spec = yaml.safe_load((tmp_path / "grpo" / "config.yaml").read_text())["reward"]
    name = f"{__name__}.test_a_reward_function_object_scores_the_samples_in_this_process"
    assert spec == f"python:{name}.<locals>.brevity + 0.5*python:{name}.<locals>.<lambda>"


def test_a_function_given_in_another_process_is_named_in_the_error():
    with pytest.raises(rlhfkit.RlhfkitError, match="passed to rlhfkit.run in another process"):
        check_spec("python:elsewhere.score + task")


def test_settings_are_checked_as_a_config_files_are(tiny_model_dir, tmp_path):
    with pytest.raises(rlhfkit.ConfigError, match="config key 'lr': expected float, got 'abc'"):
        rlhfkit.run("sft", tmp_path / "a", model=tiny_model_dir, train_data=sft_rows(), lr="abc")
    with pytest.raises(rlhfkit.ConfigError, match="expected one of 'sigmoid', 'ipo'"):
        rlhfkit.run("dpo", tmp_path / "b", model=tiny_model_dir, train_data="x", loss="sigmod")
    with pytest.raises(rlhfkit.ConfigError, match="unknown config key 'lrr'"):
        rlhfkit.run("sft", tmp_path / "c", lrr=1e-3)
    with pytest.raises(rlhfkit.ConfigError, match="force_lr: rlhfkit eval trains nothing"):
        rlhfkit.run("eval", tmp_path / "d", force_lr=True)
    assert not any(path.exists() for path in (tmp_path / "a", tmp_path / "b", tmp_path / "c"))


def test_a_run_directory_is_refused_replaced_or_resumed_as_on_the_command_line(
    tiny_model_dir, tmp_path
):
    run_dir = tmp_path / "sft"
    settings = {**SETTINGS, "save_every": 1, "max_steps": 2, "batch_size": 4}
    settings.update(model=tiny_model_dir, train_data=sft_rows())
    rlhfkit.run("sft", run_dir, **settings)
    with pytest.raises(rlhfkit.RlhfkitError, match="already exists") as caught:
        rlhfkit.run("sft", run_dir, **settings)
    # its advice in rlhfkit.run's keywords, not the command line's flags
    assert "resume=True" in str(caught.value) and "overwrite=True" in str(caught.value)
    assert "--" not in str(caught.value)
    rlhfkit.run("sft", run_dir, overwrite=True, **settings)
    assert [m["step"] for m in rlhfkit.read_metrics(run_dir)] == [1, 2]  # not both runs' lines
    rlhfkit.run("sft", run_dir, resume=True, **settings)  # the same rows: the same config
    with pytest.raises(rlhfkit.RlhfkitError, match="the config differs") as caught:
        rlhfkit.run("sft", run_dir, resume=True, **{**settings, "train_data": sft_rows(39)})
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["train_data"]
    assert f'train_data: "{saved}" -> other rows in memory; pass' in str(caught.value)


def test_a_stopped_run_is_told_to_continue_with_resume_true(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    run_dir = tmp_path / "sft"
    settings = {**SETTINGS, "save_every": 1, "max_steps": 2, "batch_size": 4}
    rlhfkit.run("sft", run_dir, model=tiny_model_dir, train_data=sft_rows(), **settings)

    def stopped(cfg, run, resume):
        raise KeyboardInterrupt  # Ctrl-C, once the checkpoints are there

    monkeypatch.setattr("rlhfkit.train.sft.train_sft", stopped)
    with pytest.raises(KeyboardInterrupt):
        rlhfkit.run(
            "sft", run_dir, resume=True, model=tiny_model_dir, train_data=sft_rows(), **settings
        )
    said = [r.getMessage() for r in caplog.records if "continues from" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("with the same call and resume=True")


def run_script(script: Path) -> subprocess.CompletedProcess:
    """`python SCRIPT` in a fresh process, which must succeed."""
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_script_that_names_its_own_file_as_reward_runs_once(tiny_model_dir, tmp_path):
    # `reward="this_script.py:fn"` used to import the script again: its body ran twice
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import rlhfkit
            print("body runs")
            calls = []
            def score(prompts, responses, **columns):
                calls.append(len(responses))
                return [0.0] * len(responses)
            settings = {grpo_settings(tiny_model_dir)!r}
            rlhfkit.run("grpo", {str(tmp_path / "run")!r}, reward=__file__ + ":score", **settings)
            print("calls", calls)
            """
        )
    )
    done = run_script(script)
    assert done.stdout.count("body runs") == 1 and "calls [8, 8]" in done.stdout


def test_commands_that_place_their_own_run_or_run_elsewhere_say_so(monkeypatch):
    with pytest.raises(rlhfkit.RlhfkitError, match="unknown command 'sfft'"):
        rlhfkit.run("sfft")
    with pytest.raises(rlhfkit.RlhfkitError, match="set its runs_dir= and name="):
        rlhfkit.run("pipeline", "runs/demo")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(rlhfkit.RlhfkitError, match="-m rlhfkit sft"):
        rlhfkit.run("sft")


def test_the_libraries_are_quiet_during_a_run_and_as_before_after():
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_info()
    logging.enable_progress_bar()
    with quiet_libraries():
        assert logging.get_verbosity() == logging.ERROR
        assert not logging.is_progress_bar_enabled()
    assert logging.get_verbosity() == logging.INFO and logging.is_progress_bar_enabled()
    logging.set_verbosity(verbosity)  # as the other tests had it
    if not bars:
        logging.disable_progress_bar()


def test_paths_become_text_in_plain_and_list_settings():
    from rlhfkit.api import python_values

    values = python_values(
        {"model": Path("m"), "models": [Path("a"), "b"], "sft": {"model": Path("s")}}, Path("i"), {}
    )
    assert values == {"model": "m", "models": ["a", "b"], "sft": {"model": "s"}}


def test_two_functions_of_one_name_keep_their_own_names_and_scores():
    from rlhfkit.api import reward_spec
    from rlhfkit.rewards.python_functions import python_function

    def scaled(factor):
        def score(prompts, responses, **columns):
            return [factor] * len(responses)

        return score

    named = {}
    first, second = scaled(1.0), scaled(2.0)
    spec = reward_spec([first, second, (0.5, first)], named)
    terms = [term.split("*")[-1] for term in spec.split(" + ")]
    assert terms[1] == terms[0] + "#2" and terms[2] == terms[0]  # first named once
    assert python_function(terms[0]) is first and python_function(terms[1]) is second


def test_a_weight_multiplies_every_term_of_its_reward_to_the_last_bit():
    from rlhfkit.api import reward_spec
    from rlhfkit.rewards.builder import parse_spec

    def one(prompts, responses, **columns):
        return [1.0] * len(responses)

    def two(prompts, responses, **columns):
        return [2.0] * len(responses)

    named = {}
    terms = parse_spec(reward_spec([(0.5, [one, (3, two)]), (1 / 3, "task + 0.2*f.py:g")], named))
    by_name = {name: function for function, name in ((one, "one"), (two, "two"))}
    assert [weight for _, weight in terms] == [0.5, 1.5, 1 / 3, 0.2 / 3]
    assert [term for term, _ in terms][2:] == ["task", "f.py:g"]
    assert all(term.endswith(f"{name}") for (term, _), name in zip(terms, by_name))
    assert parse_spec(reward_spec((2.0, one), named)) == [(terms[0][0], 2.0)]  # a lone pair


@pytest.mark.parametrize(
    "reward, problem",
    [
        ([(0.5,)], "item 1: a weighted reward is a (weight, reward) pair"),
        ([(0.5, 0.5)], "item 1: expected a function"),
        ([(0.5, "task", 3)], "item 1: a weighted reward is a (weight, reward) pair"),
        ([print, []], "item 2: expected a function"),
    ],
)
def test_a_reward_that_is_no_reward_is_one_line(reward, problem):
    from rlhfkit.api import reward_spec

    with pytest.raises(rlhfkit.RlhfkitError, match=re.escape(problem)):
        reward_spec(reward, {})


def test_a_reward_setting_sums_a_list_of_spec_strings_and_weighs_a_lone_pair():
    from rlhfkit.api import python_values

    values = python_values(
        {
            "reward": ["f.py:score", "f.py:short"],
            "label_reward": (0.5, "f.py:score"),
            "models": ["runs/a/final", "runs/b/final"],  # a list setting stays a list
        },
        Path("i"),
        {},
    )
    assert values["reward"] == "f.py:score + f.py:short"
    assert values["label_reward"] == "0.5*f.py:score"
    assert values["models"] == ["runs/a/final", "runs/b/final"]
    with pytest.raises(rlhfkit.RlhfkitError, match=r"^reward: expected a function.*got \[\]$"):
        python_values({"reward": []}, Path("i"), {})


def test_jobs_that_rerun_refuse_resume_and_overwrite():
    for flag in ("resume", "overwrite"):
        with pytest.raises(rlhfkit.RlhfkitError, match="neither resumes nor takes overwrite"):
            rlhfkit.run("pipeline", **{flag: True})


def test_the_command_lines_flags_read_as_keywords():
    from rlhfkit.api import python_wording

    guard = "lr=0.001 ... or pass --force-lr (the config key force_lr=true) to train anyway"
    assert python_wording(guard) == "lr=0.001 ... or pass force_lr=True to train anyway"
    changed = "pass --resume-with-changes to continue; or --resume; choose another name (--name)"
    assert python_wording(changed) == (
        "pass resume_with_changes=True to continue; or resume=True; choose another name (run_dir)"
    )


def test_messages_are_printed_until_the_caller_sets_up_logging(tiny_model_dir, tmp_path):
    # a fresh process: pytest's own logging set-up would stand for the caller's here
    script = tmp_path / "train.py"
    settings = dict(model=str(tiny_model_dir), max_steps=1, batch_size=4, **SETTINGS)
    script.write_text(
        textwrap.dedent(
            f"""
            import logging, rlhfkit
            rows = {sft_rows(8)!r}
            rlhfkit.run("sft", {str(tmp_path / "a")!r}, train_data=rows, **{settings!r})
            print("-- rlhfkit at WARNING")
            logging.getLogger("rlhfkit").setLevel(logging.WARNING)
            rlhfkit.run("sft", {str(tmp_path / "b")!r}, train_data=rows, **{settings!r})
            """
        )
    )
    done = run_script(script)
    default, quiet = done.stdout.split("-- rlhfkit at WARNING")
    assert "train data " in default and "train data " not in quiet
    assert "model saved to" in quiet  # the command's own final lines stay
    assert "train data " in (tmp_path / "a" / "log.txt").read_text()
    assert not (tmp_path / "b" / "log.txt").exists()  # nothing passed the caller's level


def test_a_run_records_the_call_that_started_it(tiny_model_dir, tmp_path):
    def brevity(prompts, responses, **columns):
        return [0.0] * len(responses)

    text = call_text("grpo", tmp_path / "g", {"model": tiny_model_dir, "prompts": prompt_rows()})
    assert (
        text
        == f"rlhfkit.run('grpo', '{tmp_path / 'g'}', model='{tiny_model_dir}', prompts=<64 rows>)"
    )
    assert call_text("grpo", Path("g"), {"reward": brevity, "tags": ["a", "b"]}).endswith(
        "reward=<function test_a_run_records_the_call_that_started_it.<locals>.brevity>, "
        "tags=['a', 'b'])"
    )
    run_dir = tmp_path / "sft"
    rlhfkit.run(
        "sft", run_dir, model=tiny_model_dir, train_data=sft_rows(8), max_steps=1, **SETTINGS
    )
    [start] = rlhfkit.read_metrics(run_dir / "starts.jsonl")
    assert start["command"].startswith(f"rlhfkit.run('sft', '{run_dir}', model=")
    assert "train_data=<8 rows>" in start["command"]


def test_a_jobs_filled_key_given_at_its_default_is_refused_by_name(tmp_path):
    with pytest.raises(rlhfkit.RlhfkitError, match="^sft.seed is set by the pipeline from seed="):
        rlhfkit.run("pipeline", runs_dir=str(tmp_path), seed=1, sft={"seed": 0})
    assert not any(tmp_path.iterdir())
