"""trainer.progress: one line per refresh off a terminal, at most one per interval."""

from __future__ import annotations

import io

import pytest

from trainer.progress import progress_bar


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr("tqdm.std.time", c)
    return c


def test__off_a_terminal_a_line_at_most_every_interval(clock: _Clock) -> None:
    out = io.StringIO()
    with progress_bar(total=1000, desc="run", file=out, log_interval_s=30) as bar:
        for i in range(600):  # 600 steps in 60 s: 0.1 s a step
            clock.t += 0.1
            bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
            bar.update(1)
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # the opening line, one per 30 s (at steps 300 and 600), the closing one
    assert 2 <= len(lines) <= 4, lines
    assert all(line.startswith("run:") for line in lines)
    assert "600/1000" in lines[-1] and "loss=0.002" in lines[-1]
    assert len(set(lines)) == len(lines)  # no refresh printed twice


def test__postfix_alone_never_prints(clock: _Clock) -> None:
    out = io.StringIO()
    bar = progress_bar(total=10, file=out, log_interval_s=30)
    before = out.getvalue()
    for _ in range(5):
        clock.t += 100
        bar.set_postfix(x=1, refresh=False)
    assert out.getvalue() == before
    bar.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test__on_a_terminal_the_bar_redraws_in_place(clock: _Clock) -> None:
    out = _Terminal()
    with progress_bar(total=3, file=out) as bar:
        for _ in range(3):
            clock.t += 1
            bar.update(1)
    assert out.getvalue().count("\r") >= 3 and out.getvalue().count("\n") <= 1
