"""Jobs for the worker-pool tests (a module of its own: spawned workers import it, so it imports
little), and a helper that kills this process's first spawned worker from a thread."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from lmm_jax.data import meds_io


class TwoArgError(Exception):
  """An exception pickle cannot rebuild (args is one string, __init__ wants two): the kind of
  error that used to hang multiprocessing.Pool."""

  def __init__(self, path: str, message: str):
    super().__init__(f"{path}: {message}")


def job(x):
  """x * 10 for a number; a string names a failure to act out."""
  if isinstance(x, tuple):  # (value, seconds): a slow job
    time.sleep(x[1])
    return x[0] * 10
  if x == "meds_error":
    raise meds_io.MEDSFormatError("data/3.parquet", "required column is missing", "code")
  if x == "two_arg_error":
    raise TwoArgError("data/3.parquet", "bad")
  if x == "unpicklable_result":
    return lambda: None
  if x == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
  if x == "exit":
    os._exit(5)  # pylint: disable=protected-access
  if x == "sys_exit":
    sys.exit(4)
  return x * 10


def marker_job(item: tuple[str, int, float]) -> int:
  """Sleeps, then writes DIR/INDEX.done; index 0 fails at once."""
  directory, index, seconds = item
  if index == 0:
    raise ValueError("job 0 fails")
  time.sleep(seconds)
  with open(os.path.join(directory, f"{index}.done"), "w") as f:
    f.write("done")
  return index


def spawned_children(pid: int | None = None) -> list[int]:
  """Pids of the multiprocessing-spawned children of a process (Linux /proc)."""
  pid = os.getpid() if pid is None else pid
  kids = []
  for tid in os.listdir(f"/proc/{pid}/task"):
    try:
      with open(f"/proc/{pid}/task/{tid}/children") as f:
        kids += [int(k) for k in f.read().split()]
    except OSError:
      continue
  out = []
  for k in kids:
    try:
      with open(f"/proc/{k}/cmdline", "rb") as f:
        if b"spawn_main" in f.read():
          out.append(k)
    except OSError:
      continue
  return out


class KillFirstWorker(threading.Thread):
  """Kills (SIGKILL) this process's first spawned worker as soon as one exists."""

  def __init__(self, timeout_s: float = 120.0, after_s: float = 0.0):
    super().__init__(daemon=True)
    self.timeout_s, self.after_s = timeout_s, after_s
    self.killed: int | None = None
    self._done = threading.Event()

  def run(self) -> None:
    deadline = time.time() + self.timeout_s
    while time.time() < deadline and not self._done.is_set():
      kids = spawned_children()
      if kids:
        time.sleep(self.after_s)
        try:
          os.kill(kids[0], signal.SIGKILL)
          self.killed = kids[0]
        except ProcessLookupError:
          continue
        return
      time.sleep(0.01)

  def stop(self) -> None:
    self._done.set()
    self.join()
