"""`[lit_ft]` lines: rank zero's only, stdout for news and stderr for warnings, and once in
run.log (Hydra's file handler on the root logger) without a second console copy."""

from __future__ import annotations

import logging

from lightning.fabric.utilities.rank_zero import rank_zero_only

from lit_ft.log import error, say, warn


def test_rank_zero_prints_news_to_stdout_and_warnings_to_stderr(capsys):
    say("one step")
    warn("a late batch")
    out, err = capsys.readouterr()
    assert out == "[lit_ft] one step\n"
    assert err == "[lit_ft] warning: a late batch\n"


def test_other_ranks_print_only_their_own_error(capsys, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1, raising=False)
    say("one step")
    warn("a late batch")
    error("rank 1 ran out of memory")
    out, err = capsys.readouterr()
    assert out == "" and err == "lit_ft: error: rank 1 ran out of memory\n"


def test_lines_reach_run_log_once_and_not_the_root_console(tmp_path, capsys):
    root = logging.getLogger()
    run_log = logging.FileHandler(tmp_path / "run.log")
    console = logging.StreamHandler()  # Hydra's console handler, on the root logger too
    seen: list[str] = []
    console.emit = lambda record: seen.append(record.getMessage())
    root.addHandler(run_log)
    root.addHandler(console)
    try:
        say("data prepared in 0.20s")
        warn("no validation split")
    finally:
        root.removeHandler(run_log)
        root.removeHandler(console)
        run_log.close()
    lines = (tmp_path / "run.log").read_text().splitlines()
    assert lines == ["[lit_ft] data prepared in 0.20s", "[lit_ft] warning: no validation split"]
    assert seen == []  # printed once, by lit_ft's own handler
    assert capsys.readouterr().out == "[lit_ft] data prepared in 0.20s\n"
