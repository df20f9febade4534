"""The case folder every catalogue entry is built in (see harness.py)."""

import pytest

from tests.reliability.harness import Env


@pytest.fixture
def env(tmp_path, tiny_model_dir) -> Env:
    case_env = Env(tmp_path, tiny_model_dir)
    yield case_env
    for cleanup in reversed(case_env.cleanups):
        cleanup()
