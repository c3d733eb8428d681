"""Per-stage wall-clock timing of a control step."""

from __future__ import annotations

import time
from contextlib import contextmanager

STAGES = ("preprocess", "encode", "sample", "score", "select")


class StageTimer:
    """Collects milliseconds per named stage; one per `Engine.infer` call."""

    def __init__(self):
        self.ms: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3

    def finish(self) -> dict[str, float]:
        self.ms["total"] = (time.perf_counter() - self._start) * 1e3
        return self.ms
