"""Progress reporting that suits where it goes: a tqdm bar on a terminal, plain periodic lines in a log.

A carriage-return bar written to a file or a pipe fills logs with unreadable redraws; there, one line every
``interval`` seconds (and one at the end) says how far the work is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

__all__ = ["ProgressBar", "track"]

DEFAULT_INTERVAL_S = 30.0


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class ProgressBar:
    """``tqdm`` on a terminal; elsewhere a plain line every ``interval`` seconds; nothing when disabled.

    Args:
        total: units expected (None: unknown).
        desc: what is being done (prefix of every line).
        unit: name of one unit ("img", "step").
        enabled: False silences the bar and the periodic lines (``write`` still prints).
        initial: units already done (a resumed run).
        stream: where to write (default ``sys.stderr``).
        interval: seconds between plain lines when ``stream`` is not a terminal (default 30).
        plain: plain lines even on a terminal (no bar).
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        enabled: bool = True,
        initial: int = 0,
        stream: TextIO | None = None,
        interval: float | None = None,
        plain: bool = False,
        **tqdm_options: Any,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n = self._start_n = initial
        self.interval = DEFAULT_INTERVAL_S if interval is None else interval
        self.postfix: dict[str, str] = {}
        self._start = self._last = time.monotonic()
        self._bar = None
        if enabled and not plain and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
                leave=tqdm_options.pop("leave", True),
                **tqdm_options,
            )

    def line(self) -> str:
        """The plain progress line: ``desc: n/total (p%), rate unit/s, postfix``."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        done = f"{self.n:,}" + (
            f"/{self.total:,} ({100 * self.n / max(self.total, 1):.0f}%)" if self.total else ""
        )
        rate = (self.n - self._start_n) / elapsed
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        return f"{self.desc}: {done}, {rate:.3g} {self.unit}/s, {elapsed:.0f} s{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._emit()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = {k: str(v) for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(refresh=False, **self.postfix)

    def write(self, text: str) -> None:
        """Print a line (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _emit(self) -> None:
        self._last = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n > self._start_n and self._last != self._start:
            self._emit()  # a final line, when earlier lines were printed
        self.enabled = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(iterable: Iterable[T], total: int | None = None, **options: Any) -> Iterator[T]:
    """Iterate ``iterable`` with a :class:`ProgressBar` (``total`` from ``len`` when possible)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with ProgressBar(total=total, **options) as bar:
        for item in iterable:
            yield item
            bar.update(1)
