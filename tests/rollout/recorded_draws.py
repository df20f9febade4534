"""What a run samples, recorded, and where two runs along different float paths part.

Two runs of the same draws whose logits agree up to rounding (one process and 2 ranks, each
rank sampling its share of a step's rows in other batch shapes; a pass with and without
autograd) draw the same tokens, except where a draw sits on a near-tie, which either path may
break its own way (where depends on the CPU's kernels); from there on the two runs train on
other samples. So both runs record what they sample (`recording_draws`), and they are compared
up to the first step whose tokens differ, where each difference must be a near-tie of the
first run's draw (`first_apart`, as `tests.rollout.conftest.assert_paths_agree` allows).
Usually no token differs and every step is compared."""

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from rlhfkit.eval import sampling as eval_sampling
from rlhfkit.rollout import engine
from rlhfkit.rollout import sample as rollout_sample
from rlhfkit.runtime.distributed import current_ranks
from rlhfkit.runtime.metrics import read_metrics
from rlhfkit.runtime.rundir import RunDir
from rlhfkit.train import policy_run
from tests.rollout.conftest import acceptable_tokens, rollout_logits


def _step_of(run: RunDir) -> int:
    rows = read_metrics(run.metrics_path) if run.metrics_path.exists() else []
    return int(rows[-1]["step"]) + 1 if rows else 1


def step_being_run(run: RunDir) -> Callable[[], int]:
    """`where` for `recording_draws`: the step a trainer writing `run` is in, one past the last
    row of its metrics log (a resumed run drops the rows after its checkpoint first; rank 0 alone
    writes the log). Its evaluation after a step counts in that step."""
    return partial(_step_of, run)


@dataclass
class Sampled:
    """What one `engine.generate` call drew: its rows of a batch (all of them, or a rank's share
    of a batch sampled together, `engine.DrawRows`)."""

    where: Hashable
    """Where the run was (`recording_draws`; rank 0's, None on other ranks)."""
    first: int
    """Its first row among the batch's."""
    total: int
    """The batch's rows."""
    rows: list[list[int]]
    """Each of its rows' response tokens."""
    acceptable: torch.Tensor | None = None
    """(rows, tokens, vocab) what each draw may return where its logits differ in the last bits
    (`acceptable_tokens` under one fresh forward pass, with the draw's own uniform), recorded
    on the 1-process side (float32 sampling)."""


# the modules that sample through `engine.generate`, which each import it by name
_SAMPLERS = (rollout_sample, eval_sampling, policy_run)


def _acceptable_draws(model, rollout, generator_state, draw_rows, options) -> torch.Tensor:
    """`Sampled.acceptable` of `rollout`, sampled by `model` from the generator state
    `generator_state` as the rows `draw_rows` of a batch."""
    logits = rollout_logits(model, rollout)
    if options.get("greedy", False):
        return acceptable_tokens(logits)
    generator = torch.Generator()  # the 2-rank tests run on the CPU
    generator.set_state(generator_state)
    first, (rows, width) = draw_rows.first, rollout.response_ids.shape
    # `engine.generate` draws the uniforms of the whole batch at every step
    uniforms = torch.stack(
        [
            torch.rand(draw_rows.total, generator=generator)[first : first + rows]
            for _ in range(width)
        ],
        dim=1,
    )
    scaled = logits / options.get("temperature", 1.0)
    top_k, top_p = options.get("top_k", 0), options.get("top_p", 1.0)
    filtered = engine.filter_logits(scaled.flatten(0, 1), top_k, top_p).view_as(scaled)
    return acceptable_tokens(filtered, uniforms)


@contextmanager
def recording_draws(where: Callable[[], Hashable], near_ties: bool = False) -> Iterator[list]:
    """Inside, every `engine.generate` call of this process appends what it drew (`Sampled`,
    tagged `where()`) to the list yielded; `near_ties`: with `Sampled.acceptable` (one forward
    pass more per call). On ranks other than 0 only the calls that drew a share of a batch are
    kept: those of whole batches, rank 0 draws too (every rank evaluating, say)."""
    calls, generate = [], engine.generate

    def recorded(model, prompt_ids, prompt_mask, **options):
        generator = options.get("generator") or torch.default_generator
        state = generator.get_state()
        rollout = generate(model, prompt_ids, prompt_mask, **options)
        batch = rollout.response_ids.shape[0]
        draw_rows = options.get("draw_rows") or engine.DrawRows(0, batch)
        main = current_ranks().is_main
        if main or batch < draw_rows.total:
            lengths = rollout.response_lengths.tolist()
            acceptable = None
            if near_ties:
                acceptable = _acceptable_draws(model, rollout, state, draw_rows, options)
            calls.append(
                Sampled(
                    where=where() if main else None,
                    first=draw_rows.first,
                    total=draw_rows.total,
                    rows=[ids[:n] for ids, n in zip(rollout.response_ids.tolist(), lengths)],
                    acceptable=acceptable,
                )
            )
        return rollout

    for module in _SAMPLERS:
        module.generate = recorded
    try:
        yield calls
    finally:
        for module in _SAMPLERS:
            module.generate = generate


def first_apart(one: list[Sampled], two: list[Sampled], after=None) -> Hashable | None:
    """Where the first call's tokens differ between a 1-process run (`one`, recorded with
    near-ties) and another run of the same draws along another float path (`two`; a 2-rank run's
    calls joined by `on_every_rank`), asserting that each row's first difference is a near-tie:
    both tokens are acceptable draws of the 1-process run there. None: every call drew the same
    tokens. `after`: only the calls where > `after`."""
    if after is not None:
        one = [call for call in one if call.where > after]
        two = [call for call in two if call.where > after]
    for a, b in zip(one, two):
        assert a.where == b.where and len(a.rows) == len(b.rows), (a.where, b.where)
        apart = False
        for row, (ids_a, ids_b) in enumerate(zip(a.rows, b.rows)):
            # the record itself: each token the 1-process run drew is its draw's choice
            drawn = a.acceptable[row, torch.arange(len(ids_a)), ids_a]
            assert drawn.all(), f"{a.where} row {row}: the recorded draws are not the run's"
            differ = [t for t, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y]
            if not differ:
                assert len(ids_a) == len(ids_b), f"{a.where} row {row}: other lengths"
                continue
            t, tokens = differ[0], (ids_a[differ[0]], ids_b[differ[0]])
            near_tie = a.acceptable[row, t, list(tokens)].all()
            assert near_tie, f"{a.where} row {row} token {t}: {tokens} are no near-tie"
            apart = True
        if apart:
            return a.where
    assert len(one) == len(two), "the runs sampled as many times"
    return None


def steps_before(apart: int | None, first: int, count: int) -> int:
    """How many of the `count` steps from step `first` on come before step `apart` (all of
    them when None): the steps whose numbers the two runs must agree on."""
    return count if apart is None else max(0, min(count, apart - first))
