"""Progress without a terminal: plain lines at most every interval, with the count, rate and time left."""

from __future__ import annotations

import io

from fusionrec.progress import ProgressLines, progress


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_most_every_interval_with_rate_and_eta():
    clock, out = _Clock(), io.StringIO()
    with ProgressLines(desc="embedding items (smollm2)", total=2030, unit="item", interval=10.0, stream=out,
                       clock=clock) as bar:
        for _ in range(10):  # 64 items every 2.5 s: 25.6 items/s
            clock.now += 2.5
            bar.update(64)
    assert out.getvalue().splitlines() == [
        "embedding items (smollm2): 2,030 items",
        "embedding items (smollm2): 256/2,030 items (13%), 25.6 items/s, ETA 1 min 09 s",
        "embedding items (smollm2): 512/2,030 items (25%), 25.6 items/s, ETA 59 s",
        "embedding items (smollm2): stopped at 640/2,030 items after 25 s, 25.6 items/s",
    ]


def test_finished_work_ends_with_the_total_rate():
    clock, out = _Clock(), io.StringIO()
    bar = ProgressLines(desc="x", total=100, unit="item", stream=out, clock=clock)
    clock.now = 4.0
    bar.update(100)
    bar.close()
    bar.close()  # idempotent
    assert out.getvalue().splitlines() == ["x: 100 items", "x: done, 100 items in 4 s, 25.0 items/s"]


def test_lines_only_without_a_terminal_and_never_when_quiet(monkeypatch):
    monkeypatch.delenv("FUSIONREC_QUIET", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert isinstance(progress(desc="x", total=3, lines=True), ProgressLines)
    assert not isinstance(progress(desc="x", total=3), ProgressLines)  # bars stay off in logs, as before
    monkeypatch.setenv("FUSIONREC_QUIET", "1")
    assert not isinstance(progress(desc="x", total=3, lines=True), ProgressLines)
