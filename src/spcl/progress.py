"""Progress bars that suit where the output goes: a live bar on a terminal, plain lines in a file.

tqdm redraws its bar with carriage returns, which a terminal turns into one line that updates; in a
file (``make demo > log``, a batch job's output) every redraw stays, and a log of a long run fills
with thousands of ``\\r`` fragments on one line. :func:`progress_bar` gives tqdm's bar when the
stream is a terminal and otherwise a :class:`PlainProgress`: one ordinary line at most every
``PLAIN_EVERY_S`` seconds and one when the bar closes, e.g.
``online: 1200/40000 (3%) 2.1 it/s, 9:35 elapsed``.

:func:`end_bar_lines` closes the bars still open (an interrupted command leaves its bar half
drawn), so that the next message starts on its own line. Torch-free.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

__all__ = ["PLAIN_EVERY_S", "PlainProgress", "end_bar_lines", "progress_bar"]

PLAIN_EVERY_S = 30.0  # seconds between the lines of a bar whose stream is not a terminal
T = TypeVar("T")


def _clock(seconds: float) -> str:
    """``H:MM:SS`` or ``M:SS``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """A progress report in whole lines, for a stream that is not a terminal.

    The subset of tqdm's interface spcl uses: ``update``, ``set_postfix``, ``close``, iteration
    over the wrapped iterable and use as a context manager.

    Args:
        iterable: what to iterate over (optional).
        total: the count at the end (None: unknown).
        initial: the count already done (a resumed stage).
        desc: the label that starts each line.
        unit: what is counted (``it``, ``img``).
        disable: print nothing.
        file: the stream (default: standard error).
        every: seconds between lines.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        initial: int = 0,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: IO[str] | None = None,
        every: float = PLAIN_EVERY_S,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n, self.initial = iterable, total, initial, initial
        self.desc, self.unit, self.disable, self.every = desc, unit, disable, every
        self.file = file
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.shown = initial  # the count of the last line printed
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "PlainProgress was not given an iterable"
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def line(self) -> str:
        """The current state in one line."""
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            done += f" ({100 * self.n // self.total}%)"
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {done} {rate:.3g} {self.unit}/s, {_clock(elapsed)} elapsed"
        return f"{text}, {self.postfix}" if self.postfix else text

    def _print(self) -> None:
        stream = self.file if self.file is not None else sys.stderr
        print(self.line(), file=stream, flush=True)
        self.last, self.shown = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; print a line when ``every`` seconds have passed since the last."""
        self.n += n
        if not self.disable and time.monotonic() - self.last >= self.every:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        """Text added to the following lines (``loss=0.412``)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        """Print the final line once (nothing when disabled or nothing new was counted)."""
        if self.closed:
            return
        self.closed = True
        if not self.disable and self.n > self.shown:
            self._print()


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
) -> Any:
    """A tqdm bar on standard error when it is a terminal, else a :class:`PlainProgress`."""
    if _is_terminal(sys.stderr):
        from tqdm import tqdm

        return tqdm(
            iterable,
            total=total,
            initial=initial,
            desc=desc,
            unit=unit,
            disable=disable,
            dynamic_ncols=True,
        )
    return PlainProgress(
        iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable
    )


def end_bar_lines() -> None:
    """Close the tqdm bars still open, each ending its line, so what follows starts a new line.

    An exception (Ctrl-C) that unwinds through a loop leaves its bar drawn without a line end;
    the command line calls this before it prints why it stopped.
    """
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return  # no bar was ever made
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()
