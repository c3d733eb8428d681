"""Waiting in tests: for a condition, with a deadline, saying on failure what was awaited and what was seen."""

from __future__ import annotations

import time


def wait_until(pred, timeout: float, what: str, seen=None, poll: float = 0.01, extra=None) -> None:
    """Polls `pred()` every `poll` s until it holds; past `timeout` s raises AssertionError naming `what`, the
    last `seen()` and `extra()` (for example the logs of the processes involved)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            saw = "" if seen is None else f"; last seen: {seen()}"
            more = "" if extra is None else f"\n{extra()}"
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{saw}{more}")
        time.sleep(poll)
