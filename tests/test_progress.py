"""cimsim.progress: a bar with the time left on a terminal, plain lines in logs, nothing when quiet."""
from __future__ import annotations

import io
from pathlib import Path

from cimsim.progress import Progress, format_seconds

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_log_lines_every_tenth_with_the_time_left():
    out, clock = io.StringIO(), Clock()
    with Progress(20, "job", stream=out, tty=False, clock=clock) as bar:
        for _ in range(20):
            clock.t += 0.5
            bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("job: ") for line in lines)
    assert lines[4] == "job: 10/20 (50 %), 5.0s elapsed, about 5.0s left"
    assert lines[-1] == "job: 20/20 (100 %), 10.0s elapsed"


def test_slow_work_logs_at_least_every_interval():
    out, clock = io.StringIO(), Clock()
    bar = Progress(1000, "slow", stream=out, tty=False, clock=clock, log_every_s=30.0)
    for _ in range(3):
        clock.t += 31.0
        bar.update(note="x")
    assert out.getvalue().count("\n") == 3 and "about 8h" in out.getvalue().splitlines()[0]


def test_terminal_bar_redraws_one_line_and_quiet_prints_nothing():
    out, clock = io.StringIO(), Clock()
    with Progress(4, "tty", stream=out, tty=True, clock=clock) as bar:
        for _ in range(4):
            clock.t += 1.0
            bar.update(note="ok")
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and "[" + "#" * 24 + "]" in text and "4/4 (100 %)" in text
    assert "[######------------------] 1/4 (25 %), 1.0s elapsed, about 3.0s left; ok" in text
    quiet = io.StringIO()
    with Progress(4, "q", quiet=True, stream=quiet, tty=True) as bar:
        bar.update(4)
    assert quiet.getvalue() == "" and bar.left() == ""


def test_format_seconds():
    assert [format_seconds(s) for s in (12.34, 75, 3700)] == ["12.3s", "1m15s", "1h01m"]


def test_fit_shows_progress_and_quiet_silences_it(capsys):
    from cimsim.device.fit_command import main

    summary = str(REPO / "data" / "measured" / "rram.csv")
    assert main([summary]) == 0
    err = capsys.readouterr().err
    assert "cimsim.fit: read times: 6/6 (100 %)" in err and "about" in err
    assert main([summary, "-q"]) == 0
    assert capsys.readouterr().err == ""
