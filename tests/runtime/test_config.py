"""load_config / save_config / config_keys: round trip, overrides, unknown keys, file errors."""

import dataclasses
import enum
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config import (
    Filled,
    config_keys,
    config_to_dict,
    fill_section,
    given_keys,
    load_config,
    save_config,
)


class Schedule(str, enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    """Peak learning rate."""
    schedule: Schedule = Schedule.CONSTANT
    """Learning-rate schedule."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""


@dataclass(frozen=True)
class SFTConfig:
    steps: int = 100
    """Optimizer steps."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer section."""
    targets: list[str] = ("q_proj", "v_proj")
    """Module names to adapt."""


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "run"
    """Run name."""
    seed: int = 0
    """Seed."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute dtype."""
    max_tokens: int | None = None
    """Token budget; None for no limit."""
    output: Path = Path("runs")
    """Where run directories go."""
    compile: bool = False
    """torch.compile the model."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """SFT stage."""
    dpo: SFTConfig = field(default_factory=lambda: SFTConfig(steps=7))
    """A section whose default differs from its class defaults."""


@dataclass(frozen=True)
class JobConfig(PipelineConfig):
    """A job that fills `steps` in both its sections."""

    FILLED: ClassVar[dict[str, tuple[str, ...]]] = {"sft": ("steps",), "dpo": ("steps",)}


def test_defaults_without_file_or_overrides():
    assert load_config(PipelineConfig) == PipelineConfig()


def test_round_trip_of_a_nested_config_through_yaml(tmp_path):
    cfg = PipelineConfig(
        name="exp 1: yes",
        seed=7,
        precision="bf16",
        max_tokens=12345,
        output=Path("/tmp/x"),
        compile=True,
        sft=SFTConfig(
            steps=3,
            optim=OptimConfig(lr=1e-10, schedule=Schedule.COSINE, betas=(0.5, 0.25)),
            targets=("a",),
        ),
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    loaded = load_config(PipelineConfig, path)
    assert loaded == cfg
    assert loaded.sft.optim.schedule is Schedule.COSINE
    # Readable: declaration order, lists inline, enum by value.
    text = path.read_text()
    assert text.index("name:") < text.index("seed:") < text.index("sft:")
    assert "betas: [0.5, 0.25]" in text
    assert "schedule: cosine" in text


FINITE_FLOATS = st.floats(allow_nan=False, allow_infinity=False)


# Any value a bound allows (config_bounds: lr > 0, a 32-bit seed, every float finite); the betas
# have no bound, so any finite float of either sign goes through YAML there.
@settings(max_examples=50, deadline=None)
@given(
    name=st.text(),
    lr=st.floats(min_value=0.0, exclude_min=True, allow_infinity=False),
    betas=st.tuples(FINITE_FLOATS, FINITE_FLOATS),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    targets=st.lists(st.text(), max_size=3),
)
def test_any_legal_values_survive_the_yaml_round_trip_exactly(name, lr, betas, seed, targets):
    optim = OptimConfig(lr=lr, betas=betas)
    cfg = PipelineConfig(name=name, seed=seed, sft=SFTConfig(optim=optim, targets=tuple(targets)))
    with tempfile.TemporaryDirectory() as directory:
        save_config(cfg, f"{directory}/config.yaml")
        assert load_config(PipelineConfig, f"{directory}/config.yaml") == cfg


def test_config_to_dict_is_plain_data():
    data = config_to_dict(PipelineConfig())
    assert data["sft"]["optim"] == {"lr": 1e-4, "schedule": "constant", "betas": [0.9, 0.999]}
    assert data["sft"]["targets"] == ["q_proj", "v_proj"]
    assert data["output"] == "runs"


def test_overrides_apply_after_the_file_and_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nsft:\n  steps: 5\n  optim:\n    lr: 0.5\n")
    cfg = load_config(
        PipelineConfig,
        path,
        [
            "seed=2",
            "sft.optim.lr=3e-4",
            "compile=true",
            "sft.targets=[x, y]",
            "max_tokens=null",
            "name=a=b",
        ],
    )
    assert cfg.seed == 2
    assert cfg.sft.steps == 5  # from the file, untouched by the override of a sibling key
    assert cfg.sft.optim.lr == 3e-4
    assert cfg.compile is True
    assert cfg.sft.targets == ("x", "y")
    assert cfg.max_tokens is None
    assert cfg.name == "a=b"


@pytest.mark.parametrize("text", ["yes", "2024", "1e3", "#x", "off"])
def test_a_text_or_path_setting_keeps_the_text_as_typed(text):
    cfg = load_config(PipelineConfig, overrides=[f"name={text}", f"output={text}"])
    assert cfg.name == text and cfg.output == Path(text)


def test_null_still_unsets_a_text_setting_and_numbers_stay_numbers():
    @dataclass(frozen=True)
    class Optional:
        model: str | None = "m"
        seed: int = 0

    cfg = load_config(Optional, overrides=["model=null", "seed=12"])
    assert cfg.model is None and cfg.seed == 12
    assert load_config(Optional, overrides=["model=~x"]).model == "~x"
    with pytest.raises(ConfigError, match="seed"):
        load_config(Optional, overrides=["seed=#3"])


def test_null_unsets_a_text_setting_to_its_empty_default_and_no_other(tmp_path):
    @dataclass(frozen=True)
    class Data:
        eval_data: str = ""  # empty text: none
        runs_dir: str = "runs"

    assert load_config(Data, overrides=["eval_data=x", "eval_data=null"]).eval_data == ""
    path = tmp_path / "c.yaml"
    path.write_text("eval_data: null\n")
    assert load_config(Data, path).eval_data == ""
    with pytest.raises(ConfigError, match="^config key 'runs_dir': expected str, got None"):
        load_config(Data, overrides=["runs_dir=null"])  # it has a value when not given


def test_a_section_overlays_its_field_default():
    cfg = load_config(PipelineConfig, overrides=["dpo.optim.lr=0.1"])
    assert cfg.dpo.steps == 7
    assert cfg.dpo.optim.lr == 0.1


def test_a_mapping_override_merges_into_the_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  steps: 5\n")
    cfg = load_config(PipelineConfig, path, ["sft={optim: {lr: 0.2}}"])
    assert (cfg.sft.steps, cfg.sft.optim.lr) == (5, 0.2)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sft.lrr=1", "unknown config key 'sft.lrr'"),
        ("sft.optim.lrr=1", "unknown config key 'sft.optim.lrr' (did you mean 'sft.optim.lr'?)"),
        ("seeed=1", "unknown config key 'seeed' (did you mean 'seed'?)"),
        ("zzz=1", "unknown config key 'zzz'"),
        ("sftt.steps=1", "unknown config key 'sftt' (did you mean 'sft'?)"),
    ],
)
def test_unknown_override_key_names_it_and_suggests_a_close_one(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, overrides=[override])
    assert str(err.value) == message


def test_a_dotted_key_in_a_file_is_told_to_nest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft.steps: 5\n")
    with pytest.raises(ConfigError, match="'sft.steps': in a file, nest it: 'sft:' then '  steps"):
        load_config(PipelineConfig, path)


@pytest.mark.parametrize(
    "config, override, ours",
    [
        ("grpo", "learning_rate=1e-5", "lr"),
        ("grpo", "num_generations=8", "group_size"),
        ("grpo", "kl_coef=0.04", "beta"),
        ("ppo", "beta=0.04", "kl_coef"),
        ("sft", "gradient_accumulation_steps=2", "grad_accum"),
        # docs/dpo.md: nll_weight is TRL's rpo_alpha; difflib offered 'lora_alpha', which
        # without lora_r does nothing at all
        ("dpo", "rpo_alpha=1.0", "nll_weight"),
        ("dpo", "precompute_ref_log_probs=true", "precompute_ref"),
        # the first of rlhfkit's names that the trainer has
        ("grpo", "per_device_train_batch_size=4", "micro_batch_size"),
        ("sft", "per_device_train_batch_size=4", "batch_size"),
        ("grpo", "loss_type=dapo", "loss_aggregation"),
        ("dpo", "loss_type=ipo", "loss"),
    ],
)
def test_a_trl_name_is_answered_with_rlhfkits(config, override, ours):
    # difflib finds nothing close to learning_rate among rlhfkit's keys
    from rlhfkit.train.dpo import DPOConfig
    from rlhfkit.train.grpo import GRPOConfig
    from rlhfkit.train.ppo import PPOConfig
    from rlhfkit.train.sft import SFTConfig

    cls = {"grpo": GRPOConfig, "ppo": PPOConfig, "sft": SFTConfig, "dpo": DPOConfig}[config]
    name = override.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(cls, overrides=[override])
    assert str(err.value) == f"unknown config key '{name}' (TRL's name; rlhfkit's is '{ours}')"


def test_unknown_key_in_a_file_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  stepz: 3\n")
    with pytest.raises(
        ConfigError, match=r"^unknown config key 'sft.stepz' \(did you mean 'sft.steps'\?\)$"
    ):
        load_config(PipelineConfig, path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("seed", "override 'seed' must look like key=value"),
        (
            "seed=",
            "override 'seed=' has no value: give one (empty text is 'seed=\"\"' in a shell; a "
            "key that may be unset takes seed=null)",
        ),
        ("=3", "override '=3' has a malformed key"),
        ("sft..steps=3", "override 'sft..steps=3' has a malformed key"),
        ("seed.x=3", "config key 'seed' is not a section: set it with seed=VALUE"),
    ],
)
def test_malformed_overrides(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, overrides=[override])
    assert str(err.value) == message


def test_invalid_yaml_in_an_override_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"^override 'sft.targets=\[a, b': the value is not valid YAML"
    ):
        load_config(PipelineConfig, overrides=["sft.targets=[a, b"])


def test_a_section_given_as_a_scalar_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sft: 3\n")
    with pytest.raises(ConfigError, match=r"^config key 'sft': expected a section"):
        load_config(PipelineConfig, path)
    with pytest.raises(ConfigError, match=r"^config key 'sft': expected a section"):
        load_config(PipelineConfig, path, ["sft.steps=1"])
    with pytest.raises(ConfigError, match=r"^config key 'sft': expected a section"):
        load_config(PipelineConfig, overrides=["sft=3"])


def test_file_errors_name_the_file(tmp_path):
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(
        ConfigError, match=r"list\.yaml: expected a mapping of keys to values, got a list$"
    ):
        load_config(PipelineConfig, not_mapping)
    broken = tmp_path / "broken.yaml"
    broken.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, broken)
    assert "broken.yaml: invalid YAML" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"missing\.yaml not found"):
        load_config(PipelineConfig, tmp_path / "missing.yaml")


def test_a_key_given_twice_is_refused_naming_it_and_both_lines(tmp_path):
    # PyYAML keeps the last of two equal keys: the first setting would be dropped silently
    twice = tmp_path / "twice.yaml"
    twice.write_text("seed: 1\nname: a\nseed: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, twice)
    assert str(err.value) == (
        f"config file {twice}: invalid YAML: key 'seed' given twice (first on line 1) "
        "(line 3, column 1)"
    )
    section_twice = tmp_path / "sections.yaml"
    section_twice.write_text("sft:\n  steps: 3\nsft:\n  optim: {lr: 0.5}\n")
    with pytest.raises(ConfigError, match=r"key 'sft' given twice \(first on line 1\)"):
        load_config(PipelineConfig, section_twice)
    with pytest.raises(ConfigError, match=r"^override 'sft=\{steps: 1, steps: 2\}': .* twice"):
        load_config(PipelineConfig, overrides=["sft={steps: 1, steps: 2}"])
    # a merge key is not a duplicate: the keys written beside it override the merged ones
    merged = tmp_path / "merged.yaml"
    merged.write_text("sft: &s {steps: 3}\ndpo:\n  <<: *s\n  steps: 4\n")
    cfg = load_config(PipelineConfig, merged)
    assert (cfg.sft.steps, cfg.dpo.steps) == (3, 4)


@pytest.mark.parametrize(
    "text, meaning",
    [("0123", "83 in YAML 1.1 (octal)"), ("1:30", "90 in YAML 1.1 (base 60)")],
)
def test_a_yaml_1_1_number_that_means_another_number_is_refused(tmp_path, text, meaning):
    # PyYAML reads them so: seed 0123 would silently be 83, 1:30 steps 90
    path = tmp_path / "c.yaml"
    path.write_text(f"seed: {text}\n")
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, path)
    assert str(err.value) == (
        f"config file {path}: invalid YAML: {text} reads as {meaning}: write "
        f"{meaning.split()[0]} for that number, or '{text}' in quotes for text (line 1, column 7)"
    )
    with pytest.raises(ConfigError) as err:
        load_config(PipelineConfig, overrides=[f"sft.steps={text}"])
    assert str(err.value).startswith(f"override 'sft.steps={text}': the value is not valid YAML: ")
    assert f"{text} reads as {meaning}" in str(err.value)
    with pytest.raises(ConfigError, match=r"reads as 60\.5 in YAML 1\.1 \(base 60\)"):
        load_config(PipelineConfig, overrides=["sft.optim.lr=1:0.5"])
    # what means what it shows is kept: leading zeros of an equal number, hex, quoted text
    overrides = ["seed=007", "sft.steps=0x10", "max_tokens=1_000", f"name='{text}'"]
    cfg = load_config(PipelineConfig, overrides=overrides)
    assert (cfg.seed, cfg.sft.steps, cfg.max_tokens, cfg.name) == (7, 16, 1000, text)


def test_an_empty_file_sets_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(PipelineConfig, path) == PipelineConfig()


def test_config_keys_lists_every_dotted_leaf_key():
    assert config_keys(PipelineConfig)[:7] == [
        "name",
        "seed",
        "precision",
        "max_tokens",
        "output",
        "compile",
        "sft.steps",
    ]
    assert "sft.optim.lr" in config_keys(PipelineConfig)
    assert "sft" not in config_keys(PipelineConfig)
    assert len(config_keys(PipelineConfig)) == 6 + 2 * 5


def test_the_result_is_frozen():
    cfg = load_config(PipelineConfig)
    with pytest.raises(AttributeError):
        cfg.seed = 3  # type: ignore[misc]


def test_fill_section_fills_the_keys_a_user_left_alone():
    cfg = load_config(JobConfig, overrides=["dpo.targets=[a]"])
    filled = fill_section(
        cfg, "dpo", {"steps": Filled(12, "from steps=", "set steps= instead")}, by="the job"
    )
    assert filled == SFTConfig(steps=12, targets=("a",))
    assert cfg.dpo.steps == 7  # the job's config is not changed


def test_fill_section_refuses_a_key_the_user_set_naming_it():
    cfg = load_config(JobConfig, overrides=["dpo.steps=3"])
    fills = {"steps": Filled(12, "from steps=", "set steps= instead")}
    with pytest.raises(ConfigError) as caught:
        fill_section(cfg, "dpo", fills, by="the job")
    assert str(caught.value) == "dpo.steps is set by the job from steps=; set steps= instead"


def test_fill_section_compares_with_the_sections_own_default():
    # dpo's default is SFTConfig(steps=7): steps=7 is left alone, the class default 100 is a choice
    assert fill_section(JobConfig(), "dpo", {"steps": Filled(12, "", "")}, by="x").steps == 12
    with pytest.raises(ConfigError, match="dpo.steps is set by x"):
        fill_section(
            load_config(JobConfig, overrides=["dpo.steps=100"]),
            "dpo",
            {"steps": Filled(12, "", "")},
            by="x",
        )


@pytest.mark.parametrize("override", ["dpo.steps=7", "dpo={steps: 7}"])
def test_fill_section_refuses_a_given_key_even_at_its_default(override):
    cfg = load_config(JobConfig, overrides=[override])
    assert cfg == JobConfig()  # the value alone cannot tell it was set
    given = given_keys(overrides=[override])
    with pytest.raises(ConfigError, match="^dpo.steps is set by x"):
        fill_section(cfg, "dpo", {"steps": Filled(12, "", "")}, by="x", given=given)
    # given, but at the value the job fills: nothing is lost
    same = given_keys(overrides=["dpo.steps=12"])
    filled = fill_section(JobConfig(), "dpo", {"steps": Filled(7, "", "")}, by="x", given=same)
    assert filled.steps == 7


def test_fill_section_refuses_fills_its_class_does_not_declare():
    with pytest.raises(TypeError, match="FILLED"):
        fill_section(JobConfig(), "dpo", {"optim": Filled(OptimConfig(), "", "")}, by="x")
    with pytest.raises(TypeError, match="FILLED"):  # a config that is no job's
        fill_section(PipelineConfig(), "dpo", {"steps": Filled(12, "", "")}, by="x")


def test_given_keys_from_a_file_overrides_and_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 1\nsft:\n  steps: 5\n  optim:\n    lr: 0.5\n")
    assert given_keys(path) == {"seed", "sft.steps", "sft.optim.lr"}
    assert given_keys(overrides=["dpo.steps=3", "sft={optim: {lr: 1}}", "name=x"]) == {
        "dpo.steps",
        "sft.optim.lr",
        "name",
    }
    assert given_keys(values={"sft": {"steps": 2}, "seed": 0}) == {"sft.steps", "seed"}
    assert given_keys() == frozenset()


def test_a_job_configs_dict_leaves_its_filled_keys_out_and_loads_back(tmp_path):
    cfg = load_config(JobConfig, overrides=["sft.optim.lr=0.5", "seed=3"])
    data = config_to_dict(cfg)
    assert "steps" not in data["sft"] and "steps" not in data["dpo"]
    assert data["sft"]["optim"]["lr"] == 0.5 and data["seed"] == 3
    path = tmp_path / "job.yaml"
    save_config(cfg, path)
    assert load_config(JobConfig, path) == cfg
    assert not {"sft.steps", "dpo.steps"} & given_keys(path)  # loading it back sets neither


def test_fill_section_accepts_a_user_value_equal_to_the_filled_one():
    cfg = load_config(JobConfig, overrides=["sft.steps=12"])
    assert fill_section(cfg, "sft", {"steps": Filled(12, "", "")}, by="x").steps == 12


class _Mode(str, enum.Enum):
    A = "a"
    B = "b"


@dataclasses.dataclass(frozen=True)
class _Modal:
    mode: _Mode = _Mode.A
    names: tuple[str, ...] = ()
    ports: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    strict: bool = True
    limit: float | None = 1.0


def test_a_setting_only_another_choice_reads_is_refused_when_set_away_from_its_default():
    from rlhfkit.runtime.config import refuse_unread_settings

    readers = {_Mode.B: ("names", "ports")}
    refuse_unread_settings(_Modal(), "mode", readers)  # defaults, a default_factory's included
    refuse_unread_settings(_Modal(mode="b", names=("x",), ports=[3]), "mode", readers)  # read
    with pytest.raises(ConfigError, match=r"^ports=\[3\] is read by mode=b only: .* mode=a$"):
        refuse_unread_settings(_Modal(ports=[3]), "mode", readers)
    with pytest.raises(ConfigError, match=r'^names=\["x"\] is read by mode=b only'):
        refuse_unread_settings(_Modal(mode="a", names=("x",)), "mode", readers)


def test_a_refused_setting_is_written_as_yaml_writes_it():
    # a user who typed strict=false read "strict=False is read by ...": Python's spelling
    from rlhfkit.runtime.config import refuse_unread_settings, written

    for setting, shown in ((dict(strict=False), "strict=false"), (dict(limit=None), "limit=null")):
        with pytest.raises(ConfigError, match=f"^{shown} is read by mode=b only"):
            refuse_unread_settings(_Modal(**setting), "mode", {_Mode.B: ("strict", "limit")})
    assert [written(v) for v in (1e-05, _Mode.B, ("a", "b"), "true", "")] == [
        "1e-05",
        "b",
        '["a", "b"]',
        '"true"',
        '""',  # a string quoted only where YAML needs it
    ]
