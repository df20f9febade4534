"""rlhfkit from Python: `rlhfkit.run(command, run_dir, **settings)` runs any command that reads a
config, as the command line does (the same run directory, lock, `config.yaml`, resume and
overwrite rules, and the same checks of every setting), and returns its result.

What Python adds to the command line:
- settings are Python values (`lr=1e-3`, `loss="ipo"`, nested dicts for a section), checked
  and converted as a YAML file's values are, with the same one-line errors naming the key;
- a data setting (a path on the command line) also takes its rows in memory, a list of dicts
  or a `datasets.Dataset`: they are written to `RUN_DIR/inputs/KEY-HASH.jsonl` and the config
  names that file, so `config.yaml` says what ran and a resume reads the same rows;
- a reward setting (`reward`, `label_reward`, eval's `judge`) also takes a function object, or
  a list of functions, spec strings and (weight, function or spec) pairs, summed
  (`rewards.python_functions`).
"""

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rlhfkit.errors import RlhfkitError

INPUTS_DIR = "inputs"


def run(
    command: str,
    run_dir: str | os.PathLike | None = None,
    *,
    config: str | os.PathLike | None = None,
    resume: bool = False,
    resume_with_changes: bool = False,
    overwrite: bool = False,
    **settings: Any,
) -> Any:
    """Run `rlhfkit COMMAND` in this process and return its result.

    Args:
        command: a command that reads a config (`sft`, `rm`, `dpo`, `ppo`, `grpo`, `rloo`,
            `raft`, `online-dpo` or `online_dpo`, `eval`, `pipeline`, ...; `rlhfkit --help`).
        run_dir: its run directory (the command line's `--runs-dir/--name`); default
            `runs/COMMAND`. `pipeline` and `frontier` name theirs with their `runs_dir` and
            `name` settings instead.
        config: a YAML config file, which `settings` overlay.
        resume, resume_with_changes, overwrite: as `--resume`, `--resume-with-changes` and
            `--overwrite`.
        settings: the command's config keys (`docs/configuration.md`).
    Returns:
        The command's result (e.g. `SFTResult`, `GRPOResult`: its `model_dir`, its history).
    Raises:
        RlhfkitError: a one-line message naming what is wrong (a setting, a file, a row).
    """
    from rlhfkit.cli_commands import COMMANDS

    name = command.replace("_", "-")
    spec = COMMANDS.get(name)
    if spec is None:
        raise RlhfkitError(f"unknown command '{command}': one of {', '.join(COMMANDS)}")
    if "WORLD_SIZE" in os.environ:
        raise RlhfkitError(
            "rlhfkit.run runs in one process; under torchrun start the command line: "
            f"torchrun ... -m rlhfkit {name} ..."
        )
    if not spec.run_dir and run_dir is not None:
        raise RlhfkitError(
            f"rlhfkit {name} places its own run: set its runs_dir= and name= instead of run_dir"
        )
    if not spec.run_dir and (resume or resume_with_changes or overwrite):
        raise RlhfkitError(
            f"rlhfkit {name} neither resumes nor takes overwrite: run again, and it replaces "
            "its earlier run once the new one has finished (a failed or stopped one puts the "
            "earlier run back)"
        )
    root = Path(run_dir) if run_dir is not None else Path("runs") / name
    try:
        return _run(spec, name, root, config, resume, resume_with_changes, overwrite, settings)
    except RlhfkitError as error:  # its advice in this caller's terms
        error.args = (python_wording(str(error)),)
        raise


def _run(spec, name, root, config, resume, resume_with_changes, overwrite, settings) -> Any:
    """`run` once its arguments are checked: the config, the run directory, the run."""
    from rlhfkit.cli_commands import check_command_config, load_object
    from rlhfkit.runner import run_in_dir
    from rlhfkit.runtime.config import config_from_values, given_keys
    from rlhfkit.runtime.logs import console_messages
    from rlhfkit.runtime.provenance import started_by

    inputs: dict[Path, list[str]] = {}
    values = python_values(settings, root / INPUTS_DIR, inputs, functions={})
    if inputs and not spec.run_dir:
        raise RlhfkitError(f"rlhfkit {name} reads its data from files: pass paths, not rows")
    try:
        cfg = config_from_values(load_object(spec.config), values, config)
        check_command_config(name, spec, cfg, given_keys(config, values=values))
        with quiet_libraries(), console_messages(), started_by(call_text(name, root, settings)):
            if not spec.run_dir:
                return load_object(spec.run)(cfg)
            run_dir_, result = run_in_dir(
                name,
                spec,
                cfg,
                root,
                resume=resume or resume_with_changes,
                allow_changes=resume_with_changes,
                overwrite=overwrite,
                before_run=lambda _: write_inputs(inputs),
                wording=python_wording,
            )
            spec.report(cfg, run_dir_, result)
        return result
    except RlhfkitError as error:
        error.args = (rows_in_memory_named(str(error), inputs),)
        raise


def rows_in_memory_named(message: str, inputs: dict[Path, list[str]]) -> str:
    """`message` with the file that rows passed in memory were written to named by their
    setting instead: the caller passed no file, and a failed run's is gone with it."""
    for path in inputs:
        setting = path.name.rsplit("-", 1)[0]  # `_rows_file`'s "{setting}-{hash}.jsonl"
        message = message.replace(f'-> "{path}"', "-> other rows in memory")  # resume's change
        message = message.replace(str(path), f"setting '{setting}' (rows in memory)")
    return message


# the command line's flags in a message, as `rlhfkit.run` takes them (longest first)
FLAGS_IN_PYTHON = (
    ("the same command and --resume", "the same call and resume=True"),
    ("pass --force-lr (the config key force_lr=true)", "pass force_lr=True"),
    ("(check --runs-dir and --name)", "(check run_dir)"),
    ("--resume-with-changes", "resume_with_changes=True"),
    ("--resume", "resume=True"),
    ("--overwrite", "overwrite=True"),
    ("--force-lr", "force_lr=True"),
    ("(--name)", "(run_dir)"),
)


def call_text(name: str, root: Path, settings: Mapping[str, Any]) -> str:
    """The `rlhfkit.run` call as one line for `starts.jsonl`: plain values as written, rows in
    memory and functions by what they are (their contents are in `inputs/` and the config)."""

    def shown(value) -> str:
        if callable(value):
            return f"<function {getattr(value, '__qualname__', type(value).__name__)}>"
        if isinstance(value, (str, int, float, bool, Path)) or value is None:
            text = repr(str(value) if isinstance(value, Path) else value)
            return text if len(text) <= 200 else f"<text of {len(text)} characters>"
        if hasattr(value, "__len__") and not isinstance(value, Mapping):
            items = list(value) if not hasattr(value, "column_names") else []
            if items and all(isinstance(v, (str, int, float, bool)) for v in items):
                return repr(items) if len(repr(items)) <= 200 else f"<{len(items)} values>"
            return f"<{len(value)} rows>"
        return f"<{type(value).__name__}>"

    arguments = [repr(name), repr(str(root)), *(f"{k}={shown(v)}" for k, v in settings.items())]
    return f"rlhfkit.run({', '.join(arguments)})"


def python_wording(message: str) -> str:
    """A message's advice in `rlhfkit.run`'s keywords instead of command-line flags."""
    for flag, keyword in FLAGS_IN_PYTHON:
        message = message.replace(flag, keyword)
    return message


def python_values(
    settings: Mapping[str, Any],
    inputs_dir: Path,
    inputs: dict[Path, list[str]],
    prefix: str = "",
    functions: dict | None = None,
) -> dict:
    """`settings` as a config file would hold them: rows in memory become the path of the file
    they will be written to (added to `inputs`), function objects reward spec terms (each its
    own name among `functions`, those of this call), paths strings; a section (a dict) the
    same, key by key (`prefix`: its dotted name)."""
    functions = {} if functions is None else functions
    values = {}
    for key, value in settings.items():
        if isinstance(value, Mapping):
            values[key] = python_values(value, inputs_dir, inputs, f"{prefix}{key}.", functions)
        elif _is_reward(key, value):
            values[key] = reward_spec(value, functions)
        elif _is_rows(value):
            values[key] = str(_rows_file(f"{prefix}{key}", value, inputs_dir, inputs))
        elif isinstance(value, (list, tuple)):  # a list setting (eval's models): paths as text
            values[key] = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        elif isinstance(value, os.PathLike):
            values[key] = os.fspath(value)
        else:
            values[key] = value
    return values


def reward_spec(value: Any, functions: dict) -> str:
    """A reward given in Python as a spec string: a function object is named by its `python:`
    term (`functions`: those this call named, so two functions never share a name); a list is a
    sum of its items, each a function, a spec, a list or a (weight, item) pair, whose weight
    multiplies every term of its item: `[(0.5, [f, g])]` is `0.5*f + 0.5*g`."""
    terms = reward_terms(value, functions, "reward")
    return " + ".join(term if weight is None else f"{weight!r}*{term}" for term, weight in terms)


def reward_terms(value: Any, functions: dict, where: str) -> list[tuple[str, float | None]]:
    """`value` as (term, weight) pairs, weights multiplied through nested pairs; a weight is
    kept to the last bit (`repr`), as the spec string will carry it."""
    from rlhfkit.rewards.builder import parse_spec
    from rlhfkit.rewards.python_functions import python_term

    if isinstance(value, str):
        return parse_spec(value)
    if callable(value):
        return [(python_term(value, functions), None)]
    if isinstance(value, tuple) and value and _is_weight(value[0]):
        if len(value) != 2:
            raise RlhfkitError(f"{where}: a weighted reward is a (weight, reward) pair")
        scale = float(value[0])
        inner = reward_terms(value[1], functions, where)
        return [(term, scale * (1.0 if weight is None else weight)) for term, weight in inner]
    if not isinstance(value, (list, tuple)) or not value:
        expected = "a function, a spec string, a list of rewards or a (weight, reward) pair"
        raise RlhfkitError(f"{where}: expected {expected}, got {value!r}")
    terms = []
    for number, item in enumerate(value, start=1):
        terms.extend(reward_terms(item, functions, f"{where}, item {number}"))
    return terms


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_inputs(inputs: dict[Path, list[str]]) -> None:
    """Write each in-memory dataset to its file (JSON lines), once: a file of that name holds
    those very rows (its name carries their hash)."""
    for path, lines in inputs.items():
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers and datasets quiet during a run, as on the command line (rlhfkit prints its
    own progress and messages), then as the caller had them."""
    import datasets
    import transformers

    from rlhfkit.runner import silence_libraries

    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    dataset_bars = datasets.is_progress_bar_enabled()
    silence_libraries()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()
        if dataset_bars:
            datasets.enable_progress_bars()


def _is_rows(value: Any) -> bool:
    if type(value).__module__.startswith("datasets.") and hasattr(value, "to_list"):
        return True  # a datasets.Dataset
    if _is_data_frame(value):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(row, Mapping) for row in value)
    )


def _is_data_frame(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "columns")


REWARD_KEYS = ("reward", "label_reward", "judge")
"""The settings that take a reward: there a list or a pair is a sum of rewards, even of spec
strings alone (elsewhere a list of strings is a list setting, like eval's models)."""


def _is_reward(key: str, value: Any) -> bool:
    if callable(value):
        return True
    if key in REWARD_KEYS and isinstance(value, (list, tuple)):
        return True
    return isinstance(value, (list, tuple)) and any(
        callable(item) or isinstance(item, tuple) for item in value
    )


def _rows_file(key: str, value: Any, inputs_dir: Path, inputs: dict[Path, list[str]]) -> Path:
    """The file rows in memory go to, named by the setting and a hash of the rows."""
    if _is_data_frame(value):
        rows = value.to_dict("records")  # Python numbers, as JSON writes them
    else:
        rows = value.to_list() if hasattr(value, "to_list") else list(value)
    lines = []
    for number, row in enumerate(rows, start=1):
        try:
            line = json.dumps(dict(row), ensure_ascii=False)
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: kept as its escape, for the data checks
            line = json.dumps(dict(row))
        except (TypeError, ValueError) as error:
            raise RlhfkitError(
                f"setting '{key}': row {number} cannot be written as JSON ({error})"
            ) from None
        lines.append(line)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:12]
    path = inputs_dir / f"{key}-{digest}.jsonl"
    inputs[path] = lines
    return path
