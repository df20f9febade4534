"""Where a policy step's time goes: seconds per phase (generation, reference, reward, update),
logged as `time_<phase>` beside the step's wall time."""

import time
from collections import defaultdict
from contextlib import contextmanager


class PhaseTimer:
    """Seconds spent per phase of one step (generation, reference, reward, update, ...)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        yield
        self.seconds[phase] += time.perf_counter() - started
