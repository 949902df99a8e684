"""Progress of the steps of a run, on stderr: a tqdm bar on a terminal, else (logs, CI, no tqdm) one
line per finished step, at most every :data:`LINE_INTERVAL_S` seconds, and always the last one.

Suites get a :class:`Progress` as ``context.progress``:

* ``for item in ctx.progress(items, desc="model"):`` counts the items of an iterable (``total`` for
  one without ``len``);
* ``with ctx.progress.bar(total, desc="static") as bar: ... bar.update(n)`` counts what the suite
  says (e.g. kernel options as they compile, when a job yields several).

A suite's bar must count what its report counts (the static bar: kernel options, not jobs).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator

LINE_INTERVAL_S = 5.0  # plain mode: a line at most this often (and the last step always)


def _tqdm_or_none(stream):
    if not getattr(stream, "isatty", lambda: False)():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


class Bar:
    """A counter of ``total`` steps named ``desc``; :meth:`update` advances it."""

    def __init__(self, total: int | None, desc: str, stream=None, interval: float = LINE_INTERVAL_S):
        self.total, self.desc, self.count = total, desc, 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.start = interval, time.perf_counter()
        self._last_line = self.start
        tqdm = _tqdm_or_none(self.stream)
        self._tqdm = tqdm(total=total, desc=desc, leave=False, file=self.stream) if tqdm is not None else None

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._tqdm is not None:
            self._tqdm.update(n)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.interval or self.count == self.total:
            self._last_line = now
            of = f"/{self.total}" if self.total is not None else ""
            print(f"  {self.desc}: {self.count}{of} done, {now - self.start:.0f} s", file=self.stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Progress:
    """``progress(iterable, desc=..., total=None)`` yields the items and counts them; ``bar(total, desc)``."""

    def __init__(self, stream=None, interval: float = LINE_INTERVAL_S):
        self.stream, self.interval = stream, interval

    def bar(self, total: int | None, desc: str = "") -> Bar:
        return Bar(total, desc, self.stream, self.interval)

    def __call__(self, iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        with self.bar(total, desc) as bar:
            for item in iterable:
                yield item
                bar.update()


class Silent(Progress):
    """No output (tests, library use)."""

    def bar(self, total: int | None, desc: str = "") -> Bar:
        return _SilentBar(total, desc)


class _SilentBar(Bar):
    def __init__(self, total, desc):
        self.total, self.desc, self.count = total, desc, 0

    def update(self, n: int = 1) -> None:
        self.count += n

    def close(self) -> None:
        pass
