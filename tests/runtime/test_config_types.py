"""Value checking against field annotations, through load_config as users meet it."""

import enum
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest

from rlhfkit.errors import ConfigError
from rlhfkit.runtime.config import config_from_values, load_config


class Estimator(str, enum.Enum):
    K1 = "k1"
    K3 = "k3"


@dataclass(frozen=True)
class InnerConfig:
    beta: float = 0.1
    """KL coefficient."""


@dataclass(frozen=True)
class TypedConfig:
    steps: int = 1
    """An int."""
    lr: float = 0.1
    """A float."""
    flag: bool = False
    """A bool."""
    name: str = "x"
    """A str."""
    limit: int | None = None
    """An optional int."""
    mode: Literal["a", "b"] = "a"
    """A literal."""
    level: Literal[1, 2] = 1
    """An int literal."""
    estimator: Estimator = Estimator.K1
    """A str-valued enum."""
    ids: list[int] = ()
    """A list of ints."""
    weights: tuple[float, ...] = ()
    """A tuple of floats."""
    pair: tuple[int, str] = (0, "")
    """A fixed-length tuple."""
    inner: InnerConfig | None = None
    """An optional section."""
    section: InnerConfig = field(default_factory=InnerConfig)
    """A section."""


def load(*overrides: str) -> TypedConfig:
    return load_config(TypedConfig, overrides=list(overrides))


def error_of(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        load(*overrides)
    return str(err.value)


def test_values_are_converted_to_the_annotated_types():
    cfg = load(
        "lr=3",
        "weights=[1, 0.5]",
        "ids=[1,2]",
        "pair=[3, z]",
        "estimator=k3",
        "limit=5",
        "inner={}",
    )
    assert cfg.lr == 3.0 and isinstance(cfg.lr, float)
    assert cfg.weights == (1.0, 0.5) and all(isinstance(w, float) for w in cfg.weights)
    assert cfg.ids == (1, 2)
    assert cfg.pair == (3, "z")
    assert cfg.estimator is Estimator.K3
    assert cfg.limit == 5
    assert cfg.inner == InnerConfig()


def test_numpy_numbers_from_python_are_plain_numbers():
    cfg = config_from_values(TypedConfig, {"steps": np.int64(3), "lr": np.float32(0.5)})
    assert cfg.steps == 3 and type(cfg.steps) is int
    assert cfg.lr == 0.5 and type(cfg.lr) is float
    with pytest.raises(ConfigError, match="expected int, got np.float64"):
        config_from_values(TypedConfig, {"steps": np.float64(3.0)})


class Table:
    def __repr__(self):  # as a DataFrame's: one line per row
        return "   prompt chosen\n0  Say red:  red"


def test_a_value_shown_in_an_error_is_one_line():
    with pytest.raises(ConfigError) as err:
        config_from_values(TypedConfig, {"name": Table()})
    assert str(err.value) == "config key 'name': expected str, got prompt chosen 0 Say red: red"


def test_exponent_floats_that_yaml_reads_as_strings_are_accepted():
    assert load("lr=1e-4").lr == 1e-4
    assert load("section.beta=5E-2").section.beta == 0.05


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=abc", "config key 'lr': expected float, got 'abc'"),
        ("steps=true", "config key 'steps': expected int, got True"),
        ("lr=false", "config key 'lr': expected float, got False"),
        ("steps=1.5", "config key 'steps': expected int, got 1.5"),
        ("flag=1", "config key 'flag': expected bool, got 1"),
        ("name=[12]", "config key 'name': expected str, got [12]"),
        ("limit=x", "config key 'limit': expected int or null, got 'x'"),
        ("limit=none", "config key 'limit': expected int or null, got 'none'; null means none"),
        ("steps=None", "config key 'steps': expected int, got 'None'"),
        ("mode=c", "config key 'mode': expected one of 'a', 'b', got 'c'"),
        ("level=true", "config key 'level': expected one of 1, 2, got True"),
        ("estimator=k2", "config key 'estimator': expected one of 'k1', 'k3', got 'k2'"),
        ("ids=[1, x]", "config key 'ids': expected list of int, got [1, 'x']"),
        ("ids=3", "config key 'ids': expected list of int, got 3; write a list: [3]"),
        ("ids=null", "config key 'ids': expected list of int, got None; it cannot be null"),
        ("pair=[1]", "config key 'pair': expected list of 2 items (int, str), got [1]"),
        ("section.beta=[1]", "config key 'section.beta': expected float, got [1]"),
        ("name=[]", "config key 'name': expected str, got []; an empty list holds no rows to read"),
        (
            "inner=3",
            "config key 'inner': expected a section (a mapping of keys to values) or null, got 3",
        ),
    ],
)
def test_wrong_types_are_one_line_errors_naming_the_key(override, message):
    assert error_of(override) == message


def test_an_unknown_key_inside_an_optional_section_is_reported_precisely():
    assert (
        error_of("inner={betta: 1}")
        == "unknown config key 'inner.betta' (did you mean 'inner.beta'?)"
    )


def test_none_is_accepted_only_where_the_annotation_allows_it():
    assert load("limit=null").limit is None
    assert error_of("steps=null") == "config key 'steps': expected int, got None"
