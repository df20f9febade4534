"""Bad config values, overrides and YAML files: each is refused with one line naming the key,
or the config file and its line (the catalogue's promise: harness.py)."""

import pytest
import torch

from tests.reliability.harness import QUIET, Case, Env, Invocation, check_case, params


def run(command: str, *overrides: str, expect: tuple[str, ...], config: str | bytes | None = None):
    """A case builder: `rlhfkit COMMAND` (sft, dpo, grpo) with a good model and data, the bad
    `overrides` and a config file holding `config`; the line must hold `expect`, where
    "{config}" stands for the config file's path."""

    def build(env: Env) -> Invocation:
        # a policy trainer draws its prompts from a task; the others read train_data
        data = "task=arith" if command == "grpo" else f"train_data={env.good_sft()}"
        argv = [command, f"model={env.model}", data, *QUIET]
        path = env.root / "config.yaml"
        if config is not None:
            env.file(path.name, config)
            argv += ["--config", str(path)]
        fragments = tuple(fragment.replace("{config}", str(path)) for fragment in expect)
        return Invocation([*argv, *overrides, *env.flags()], fragments)

    return build


def sft(*overrides: str, expect: tuple[str, ...], config: str | bytes | None = None):
    return run("sft", *overrides, expect=expect, config=config)


def pipeline(*overrides: str, expect: tuple[str, ...]):
    """The pipeline names its run in its config (`runs_dir`, `name`), not with flags."""

    def build(env: Env) -> Invocation:
        argv = ["pipeline", f"runs_dir={env.runs}", "name=demo", *overrides]
        return Invocation(argv, expect)

    return build


def eval_models(*models: str, expect: tuple[str, ...]):
    """`rlhfkit eval` of `models`, where "{model}" stands for the good model's path; the line
    must hold `expect`, with "{model}" there too."""

    def build(env: Env) -> Invocation:
        listed = ",".join(model.format(model=env.model) for model in models)
        argv = ["eval", f"models=[{listed}]", "task=arith", "progress=false", *env.flags()]
        return Invocation(argv, tuple(part.format(model=env.model) for part in expect))

    return build


def config_file_is_a_directory(env: Env) -> Invocation:
    folder = env.root / "configs"
    folder.mkdir()
    argv = ["sft", "--config", str(folder), *env.flags()]
    return Invocation(argv, (str(folder), "cannot read it"))


CASES = [
    # sizes: zero or negative counts train nothing
    Case("zero-steps", sft("max_steps=0", expect=("config key 'max_steps'", ">= 1", "got 0"))),
    Case("negative-batch", sft("batch_size=-4", expect=("config key 'batch_size'", ">= 1"))),
    Case("size-as-float", sft("max_steps=1.5", expect=("config key 'max_steps'", "expected int"))),
    Case(
        "size-as-bool", sft("max_length=true", expect=("config key 'max_length'", "expected int"))
    ),
    Case(
        "size-as-word", sft("batch_size=many", expect=("config key 'batch_size'", "expected int"))
    ),
    Case("seed-negative", sft("seed=-1", expect=("config key 'seed'",))),
    Case("seed-past-32-bits", sft("seed=4294967296", expect=("config key 'seed'",))),
    # floats: finite and inside their interval
    Case("lr-nan", sft("lr=nan", expect=("config key 'lr'", "finite"))),
    Case("lr-inf", sft("lr=inf", expect=("config key 'lr'", "finite"))),
    Case("lr-negative", sft("lr=-1e-4", expect=("config key 'lr'", "> 0"))),
    Case("lr-a-word", sft("lr=fast", expect=("config key 'lr'", "expected float"))),
    Case("ratio-above-one", sft("min_lr_ratio=1.5", expect=("config key 'min_lr_ratio'",))),
    Case("top-p-zero", run("grpo", "top_p=0", expect=("config key 'top_p'", "in (0, 1]"))),
    Case("group-of-one", run("grpo", "group_size=1", expect=("config key 'group_size'", ">= 2"))),
    Case(
        "label-smoothing-half",
        run("dpo", "label_smoothing=0.5", expect=("config key 'label_smoothing'",)),
    ),
    # settings that contradict each other
    Case(
        "mini-batch-not-dividing-the-rollout",
        run(
            "grpo",
            "prompts_per_step=2",
            "group_size=2",
            expect=("mini_batch_size=64", "prompts_per_step * group_size"),
        ),
    ),
    Case(
        "smoothing-with-ipo",
        run("dpo", "loss=ipo", "label_smoothing=0.1", expect=("label_smoothing=0.1", "loss=ipo")),
    ),
    Case(
        "eval-model-listed-twice",
        eval_models("{model}", "{model}", expect=("models lists {model} twice", "name each")),
    ),
    Case(
        "eval-model-listed-twice-written-two-ways",
        eval_models("{model}", "{model}/", expect=("{model} twice (as {model} and {model}/)",)),
    ),
    # enums
    Case("precision-unknown", sft("precision=fp64", expect=("config key 'precision'", "one of"))),
    Case("truncation-unknown", sft("truncation=middle", expect=("config key 'truncation'",))),
    Case(
        "device-unknown",
        sft("device=banana", expect=("device", "'banana'")),
    ),
    Case(
        "device-cuda-without-cuda",
        sft("device=cuda", expect=("device 'cuda'", "no CUDA device")),
        skip="this machine has a CUDA device, so device=cuda is valid here"
        if torch.cuda.is_available()
        else "",
    ),
    Case("task-unknown", run("grpo", "task=chess", expect=("config key 'task'", "'arith'"))),
    # keys and overrides
    Case("unknown-key", sft("lrr=0.1", expect=("unknown config key 'lrr'", "did you mean 'lr'"))),
    Case("override-without-value", sft("lr=", expect=("override 'lr='", "has no value"))),
    Case("override-malformed-key", sft(".lr=1", expect=("override '.lr=1'", "malformed key"))),
    Case(
        "override-invalid-yaml",
        sft("lr=[1", expect=("override 'lr=[1'", "not valid YAML")),
    ),
    Case(
        "section-key-unknown",
        pipeline("sft.lrr=0.1", expect=("unknown config key 'sft.lrr'", "did you mean 'sft.lr'")),
    ),
    Case(
        "section-value-out-of-bounds",
        pipeline("grpo.max_steps=0", expect=("config key 'grpo.max_steps'", ">= 1")),
    ),
    Case(
        "value-where-a-section-goes",
        pipeline("sft=3", expect=("config key 'sft'", "section")),
    ),
    # YAML files
    Case("config-file-missing", sft("--config", "none.yaml", expect=("none.yaml not found",))),
    Case("config-file-is-a-directory", config_file_is_a_directory),
    Case(
        "yaml-syntax-error",
        sft(
            expect=("{config}", "invalid YAML", "line 3"),
            config="lr: 0.1\nmax_steps: 3\n\tbatch_size: 4\n",
        ),
    ),
    Case(
        "yaml-python-object-tag",
        sft(
            expect=("{config}", "invalid YAML", "python/object/apply:os.system"),
            config="lr: !!python/object/apply:os.system ['touch pwned']\n",
        ),
    ),
    Case(
        "yaml-python-name-tag",
        sft(
            expect=("{config}", "invalid YAML", "python/name"),
            config="lr: !!python/name:os.getcwd\n",
        ),
    ),
    Case("yaml-a-list", sft(expect=("{config}", "expected a mapping"), config="- lr\n- 0.1\n")),
    Case(
        "yaml-unknown-key",
        sft(expect=("unknown config key 'max_step'", "'max_steps'"), config="max_step: 3\n"),
    ),
    Case(
        "yaml-infinite-value",
        sft(expect=("config key 'lr'", "finite"), config="lr: .inf\n"),
    ),
    Case(
        "yaml-not-utf8",
        sft(expect=("{config}", "UTF-8"), config=b"lr: 0.1\nname: caf\xe9\n"),
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_bad_config(case: Case, env: Env, monkeypatch, capsys):
    check_case(case, env, monkeypatch, capsys)
