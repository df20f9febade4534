import logging
import re

from rlhfkit.runtime.logs import ROOT_LOGGER, RUN_LOG, console_messages, run_log

log = logging.getLogger("rlhfkit.tests")


def unconfigure(monkeypatch):
    """A program that has not set up logging: pytest's capture handlers taken off root (they are
    put on for each test's call, so this runs in the test's body)."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_info_goes_to_stdout_and_a_warning_to_stderr_with_its_prefix(monkeypatch, capsys):
    unconfigure(monkeypatch)
    with console_messages():
        log.info("train data x.jsonl: 4 rows")
        log.warning("step 3: loss: update skipped")
        log.debug("not shown")
    out, err = capsys.readouterr()
    assert out == "train data x.jsonl: 4 rows\n"
    assert err == "warning: step 3: loss: update skipped\n"


def test_nothing_stays_behind_after_the_run(monkeypatch, capsys):
    unconfigure(monkeypatch)
    logger = logging.getLogger(ROOT_LOGGER)
    before = (list(logger.handlers), logger.level, logger.propagate)
    with console_messages(program=True):
        assert logger.handlers != before[0]
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    log.info("after the run")
    assert capsys.readouterr() == ("", "")


def test_a_caller_who_configured_logging_decides_what_is_shown(caplog, capsys):
    # pytest's capture handler on root stands for the caller's logging.basicConfig
    caplog.set_level(logging.WARNING)
    with console_messages():
        log.info("a data report")
        log.warning("a checkpoint is damaged")
    assert capsys.readouterr() == ("", "")  # nothing printed by rlhfkit itself
    assert [r.getMessage() for r in caplog.records] == ["a checkpoint is damaged"]


def test_a_callers_level_on_rlhfkit_is_kept(monkeypatch, capsys):
    unconfigure(monkeypatch)
    logging.getLogger(ROOT_LOGGER).setLevel(logging.WARNING)
    try:
        with console_messages():
            log.info("a data report")
            log.warning("a checkpoint is damaged")
    finally:
        logging.getLogger(ROOT_LOGGER).setLevel(logging.NOTSET)
    assert capsys.readouterr() == ("", "warning: a checkpoint is damaged\n")


def test_the_command_line_prints_whatever_the_root_logger_has(caplog, capsys):
    with console_messages(program=True):
        log.info("a data report")
    assert capsys.readouterr().out == "a data report\n"
    assert not caplog.records  # shown once, on the console, not passed on as well


def test_a_quiet_rank_shows_errors_only(monkeypatch, capsys):
    unconfigure(monkeypatch)
    with console_messages(quiet=True, program=True):
        log.info("a data report")
        log.warning("a warning")
        log.error("a failure")
    assert capsys.readouterr() == ("", "error: a failure\n")


def test_the_run_log_keeps_every_message_with_its_time_and_continues_on_resume(
    monkeypatch, tmp_path, capsys
):
    unconfigure(monkeypatch)
    for message in ("first run", "resumed run"):
        with console_messages(), run_log(tmp_path):
            log.info(message)
            log.warning(f"{message} warns")
    lines = (tmp_path / RUN_LOG).read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert [re.sub(stamp, "T", line) for line in lines] == [
        "T INFO rlhfkit.tests: first run",
        "T WARNING rlhfkit.tests: first run warns",
        "T INFO rlhfkit.tests: resumed run",
        "T WARNING rlhfkit.tests: resumed run warns",
    ]
    assert re.match(stamp, lines[0])
    capsys.readouterr()
    log.warning("after the run")
    assert len((tmp_path / RUN_LOG).read_text().splitlines()) == 4  # closed and detached
