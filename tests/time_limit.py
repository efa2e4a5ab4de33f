"""A time limit for a test or a block, so that a hang fails instead of stalling the suite.

`with time_limit(60): ...` (or `@pytest.mark.time_limit(60)` on a test, see tests/conftest.py)
raises TimeLimitExceeded in the main thread after 60 s (SIGALRM: it interrupts blocking waits such
as a pool's result queue). If the block is stuck where Python cannot run the handler (inside C
code), faulthandler dumps every thread's traceback and ends the process after a grace period:
pytest-xdist then reports the test as crashed, and a plain pytest run stops instead of waiting.
pytest-timeout is not a dependency of the project.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import threading
from typing import Iterator

GRACE_S = 30.0


class TimeLimitExceeded(Exception):
  pass


@contextlib.contextmanager
def time_limit(seconds: float, what: str = "the test") -> Iterator[None]:
  """Raises TimeLimitExceeded when the block runs longer than `seconds`."""
  in_main_thread = threading.current_thread() is threading.main_thread()
  previous = None
  if in_main_thread:

    def on_alarm(signum, frame):
      del signum, frame
      raise TimeLimitExceeded(f"{what} ran longer than its time limit of {seconds:g} s (a hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
  faulthandler.dump_traceback_later(seconds + GRACE_S, exit=True, file=sys.__stderr__)
  try:
    yield
  finally:
    faulthandler.cancel_dump_traceback_later()
    if in_main_thread:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)
