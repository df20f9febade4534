"""ProgressBar: counts, loss and tokens per second, drawn or not."""

import io

from rich.console import Console

from rlhfkit.runtime.progress import ProgressBar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_disabled_bar_draws_nothing_but_counts():
    clock = FakeClock()
    with ProgressBar(10, "sft", enabled=False, start=4, clock=clock) as bar:
        clock.now += 2.0
        bar.update(loss=1.23456, tokens=500)
        bar.update(2, tokens=300)
    assert bar.completed == 7
    assert bar.last_loss == 1.23456
    assert bar.tokens_per_second == 400.0


def test_an_enabled_bar_shows_progress_loss_and_rate():
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=150)
    clock = FakeClock()
    with ProgressBar(10, "sft", start=2, console=console, clock=clock) as bar:
        clock.now += 4.0
        bar.update(3, loss=0.123456789, tokens=2000)
    text = output.getvalue()
    assert "sft" in text
    assert "5/10" in text
    assert "loss 0.1235" in text
    assert "500 tok/s" in text


def test_a_bar_without_a_loss_shows_none():
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=150)
    with ProgressBar(4, "sample", console=console, with_loss=False) as bar:
        bar.update(1, tokens=10)
    assert "1/4" in output.getvalue() and "loss" not in output.getvalue()


def test_a_bar_that_is_not_a_terminal_never_fails():
    output = io.StringIO()
    with ProgressBar(3, "dpo", console=Console(file=output, force_terminal=False)) as bar:
        for _ in range(3):
            bar.update(loss=float("nan"), tokens=1)
    assert bar.completed == 3
    assert "dpo" in output.getvalue()


def test_update_outside_the_context_only_counts():
    bar = ProgressBar(3, "grpo")
    bar.update(loss=2.0)
    assert bar.completed == 1


def test_a_work_bar_is_drawn_only_when_named_and_shows_no_loss():
    from rlhfkit.runtime.progress import work_bar

    named, silent = work_bar(3, "judging"), work_bar(3, None)
    assert (named.total, named.description, named.enabled, named.with_loss) == (
        3,
        "judging",
        True,
        False,
    )
    assert not silent.enabled and silent.description == ""


def test_lines_printed_to_a_file_during_a_bar_stay_in_the_file(monkeypatch):
    # the bar draws on a terminal (standard error); standard output goes to a file: a line
    # printed meanwhile must land in that file, not be drawn above the bar
    import io
    import sys

    from rich.console import Console

    from rlhfkit.runtime.progress import ProgressBar

    screen, out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    console = Console(file=screen, force_terminal=True)
    with ProgressBar(2, "sft", console=console) as bar:
        print("held-out loss 1.0")
        bar.update(1)
    assert out.getvalue() == "held-out loss 1.0\n" and "held-out" not in screen.getvalue()
