"""A study's cells done / to do and the time it has left, from the durations of the cells it
trained so far.

The executor reports what each poll finds (the cell an experiment trains, the cells it has
finished); a cell is timed from the poll that first finds it training to the one that finds it
finished, so a duration is exact to one poll (2 s). A cell restored from DVC's run-cache, or done
before the study started, counts as done and is not timed: it took no training. The time left is
the cells to do times the mean duration, shared by the experiments that run at once (one
experiment trains its cells one after the other).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass
class Eta:
    cells: dict[str, int]  # experiment -> how many cells it has
    clock: Callable[[], float] = time.monotonic  # s
    ended: set[str] = field(default_factory=set)  # experiments with every cell done
    done: set[tuple[str, str]] = field(default_factory=set)  # (experiment, cell)
    started: dict[tuple[str, str], float] = field(default_factory=dict)  # -> clock() when seen
    durations: list[float] = field(default_factory=list)  # s, of each cell trained and timed

    @property
    def total(self) -> int:
        return sum(self.cells.values())

    def observe(self, experiment: str, running: str | None, finished: Iterable[str]) -> int:
        """One poll's view of an experiment; the number of cells it found newly finished."""
        now = self.clock()
        new = [(experiment, c) for c in finished if (experiment, c) not in self.done]
        for key in new:
            self.done.add(key)
            if key in self.started:
                self.durations.append(now - self.started.pop(key))
        if running is not None and (experiment, running) not in self.done:
            self.started.setdefault((experiment, running), now)
        return len(new)

    def end(self, experiment: str) -> None:
        """Every cell of ``experiment`` is done (done before the study, or it succeeded)."""
        self.ended.add(experiment)

    def stop(self, experiment: str) -> None:
        """``experiment`` failed or was lost: the cells it finished stay done, the others leave
        this study's count (nothing will train them now) and the time left."""
        finished = sum(1 for exp, _ in self.done if exp == experiment)
        self.cells[experiment] = finished
        self.started = {k: t for k, t in self.started.items() if k[0] != experiment}
        self.ended.add(experiment)

    def cells_done(self) -> int:
        seen = sum(1 for exp, _ in self.done if exp not in self.ended)
        return sum(self.cells[e] for e in self.ended) + seen

    def seconds_left(self, at_once: int) -> float | None:
        """Seconds the cells to do take, ``at_once`` experiments at a time; None before a
        cell was timed."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        return (self.total - self.cells_done()) * mean / max(at_once, 1)

    def line(self, at_once: int) -> str:
        """e.g. "cells: 3 done / 7 to do; about 14 min left (mean 4.0 min a cell, 2 at once)"."""
        done = self.cells_done()
        text = f"cells: {done} done / {self.total - done} to do"
        left = self.seconds_left(at_once)
        if left is None:
            return text + ("" if done == self.total else
                           "; time left: known once a cell has trained")
        mean = f"mean {duration(sum(self.durations) / len(self.durations))} a cell over " \
               f"{len(self.durations)} trained"
        if done == self.total:
            return f"{text} ({mean})"
        return f"{text}; about {duration(left)} left ({mean}, {max(at_once, 1)} at once)"


def duration(seconds: float) -> str:
    """A duration as a person reads it: "40 s", "4.0 min", "2.5 h"."""
    if seconds < 60:
        return f"{math.ceil(seconds)} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
