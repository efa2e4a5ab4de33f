"""A process pool whose failures reach the parent promptly.

`multiprocessing.Pool` waits forever when a worker dies (killed, out of memory) and when a worker's
exception cannot be rebuilt by pickle in the parent (the result-handler thread fails and the result
never arrives). `ProcessPool` runs jobs in worker processes of its own, watches their pipes and
process sentinels together, and on the first failure stops every worker (the remaining jobs are
dropped) and raises in the parent:
  - the worker's own exception, chained to a `RemoteTraceback` holding the worker's traceback
    (or a `WorkerError` with the type, message and traceback when the exception does not survive
    pickling);
  - `WorkerDiedError` naming the job the dead worker was running and how it ended
    ("worker counting codes in data/3.parquet was killed (signal 9, SIGKILL: out of memory?)").
Results come back in the order of the jobs, whatever the number of workers.
"""

from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import pickle
import signal
import traceback
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

_JOIN_TIMEOUT_S = 5.0


class WorkerError(RuntimeError):
  """A worker failed in a way its own exception cannot report (see the message)."""


class WorkerDiedError(WorkerError):
  """A worker process ended without an exception: killed by a signal, or exited."""


class RemoteTraceback(Exception):
  """The traceback of an exception raised in a worker (the `__cause__` of the re-raised one)."""

  def __str__(self) -> str:
    return str(self.args[0]) if self.args else ""


def how_it_ended(exitcode: Optional[int]) -> str:
  """How a worker process ended, from its exit code: 'was killed (signal 9, SIGKILL: out of
  memory?)', 'exited with status 3 without reporting an error', ..."""
  if exitcode is None:
    return "stopped responding"
  if exitcode < 0:
    try:
      name = signal.Signals(-exitcode).name
    except ValueError:
      name = "unknown signal"
    hint = ": out of memory?" if -exitcode == signal.SIGKILL else ""
    return f"was killed (signal {-exitcode}, {name}{hint})"
  return f"exited with status {exitcode} without reporting an error"


def portable_exception(e: BaseException) -> BaseException:
  """`e` if it survives a pickle round trip, else a WorkerError with its type and message."""
  try:
    pickle.loads(pickle.dumps(e))
    return e
  except Exception:  # pylint: disable=broad-except
    return WorkerError(f"{type(e).__module__}.{type(e).__qualname__}: {e}")


def _worker_main(conn: multiprocessing.connection.Connection,
                 initializer: Optional[Callable[..., None]], initargs: tuple) -> None:
  """Runs (index, fn, item) jobs from the pipe until told to stop (None) or the parent is gone."""
  try:
    if initializer is not None:
      initializer(*initargs)
  except Exception as e:  # pylint: disable=broad-except
    conn.send((-1, False, (portable_exception(e), traceback.format_exc())))
    return
  while True:
    try:
      job = conn.recv()
    except (EOFError, OSError):
      return  # the parent is gone
    if job is None:
      return
    index, fn, item = job
    try:
      message = (index, True, fn(item))
    except Exception as e:  # pylint: disable=broad-except
      message = (index, False, (portable_exception(e), traceback.format_exc()))
    try:
      conn.send(message)
    except Exception as e:  # pylint: disable=broad-except  (an unpicklable result)
      error = WorkerError(f"the job's result cannot be pickled: {type(e).__name__}: {e}")
      conn.send((index, False, (error, traceback.format_exc())))


def _describe_job(item: Any) -> str:
  return f"running the job {item!r}"


class _Worker:

  def __init__(self, ctx, initializer, initargs):
    self.conn, child_conn = ctx.Pipe(duplex=True)
    self.process = ctx.Process(target=_worker_main, args=(child_conn, initializer, initargs),
                               daemon=True)
    self.process.start()
    child_conn.close()  # so that the parent's end reports EOF once the worker is gone
    self.job: Optional[int] = None  # index of the job it is running


class ProcessPool:
  """`num_workers` worker processes running jobs `fn(item)`; see the module docstring.

  Args:
    num_workers: worker processes, started at once.
    start_method: 'spawn', 'fork' or 'forkserver' (multiprocessing start methods).
    initializer, initargs: run once in every worker before its first job.
  """

  def __init__(self, num_workers: int, *, start_method: str = "spawn",
               initializer: Optional[Callable[..., None]] = None, initargs: tuple = ()):
    if num_workers < 1:
      raise ValueError(f"num_workers={num_workers} must be at least 1")
    ctx = multiprocessing.get_context(start_method)
    self._workers: list[_Worker] = []
    try:
      for _ in range(num_workers):
        self._workers.append(_Worker(ctx, initializer, initargs))
    except BaseException:
      self.terminate()
      raise

  @property
  def pids(self) -> list[int]:
    return [w.process.pid for w in self._workers]

  def imap(self, fn: Callable[[Any], Any], items: Iterable[Any],
           describe: Optional[Callable[[Any], str]] = None) -> Iterator[Any]:
    """Yields fn(item) for every item, in order. `describe(item)` names a job in errors
    ('counting codes in FILE'). On an error every worker is stopped and the error is raised."""
    describe = describe or _describe_job
    if not self._workers:
      raise WorkerError("the pool is closed (an earlier job failed or close() was called)")
    items = list(items)
    todo = collections.deque(range(len(items)))
    done: dict[int, Any] = {}
    next_out = 0
    finished = False
    try:
      for w in self._workers:
        self._dispatch(w, fn, items, todo)
      while next_out < len(items):
        while next_out in done:
          yield done.pop(next_out)
          next_out += 1
        if next_out == len(items):
          break
        self._raise_if_one_died(items, describe)
        busy = [w for w in self._workers if w.job is not None]
        multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
        for w in busy:
          if not w.conn.poll():
            continue
          try:
            index, ok, value = w.conn.recv()
          except (EOFError, OSError):  # the worker is gone: wait for its exit status
            w.process.join(_JOIN_TIMEOUT_S)
            continue
          if not ok:
            self._raise_from_worker(value, items, index, describe)
          done[index] = value
          w.job = None
          self._dispatch(w, fn, items, todo)
      finished = True
    finally:
      if not finished:  # an error, or the caller stopped early: in-flight jobs are abandoned
        self.terminate()

  def _raise_if_one_died(self, items: list, describe) -> None:
    for w in self._workers:
      if w.process.exitcode is not None:  # workers only exit when the pool is closed
        what = describe(items[w.job]) if w.job is not None else "between jobs"
        exitcode = w.process.exitcode
        self.terminate()
        raise WorkerDiedError(f"worker {what} {how_it_ended(exitcode)}")

  def _dispatch(self, w: _Worker, fn, items: list, todo: collections.deque) -> None:
    if todo and w.process.exitcode is None:
      w.job = todo.popleft()
      try:
        w.conn.send((w.job, fn, items[w.job]))
      except (BrokenPipeError, ConnectionResetError):
        w.process.join(_JOIN_TIMEOUT_S)  # it died: reported by the caller's exit-status check

  def _raise_from_worker(self, value, items: list, index: int, describe) -> None:
    exc, tb = value
    self.terminate()
    what = describe(items[index]) if index >= 0 else "initializing"
    exc.add_note(f"(raised in the worker {what})")
    raise exc from RemoteTraceback(f'\n"""\n{tb}"""')

  def close(self) -> None:
    """Stops the workers after their current job (none is running between imap calls)."""
    for w in self._workers:
      try:
        w.conn.send(None)
      except OSError:
        pass
    for w in self._workers:
      w.process.join(_JOIN_TIMEOUT_S)
    self.terminate()

  def terminate(self) -> None:
    """Stops every worker now (SIGTERM, then SIGKILL for one that does not stop)."""
    workers, self._workers = self._workers, []
    for w in workers:
      if w.process.is_alive():
        w.process.terminate()
    for w in workers:
      w.process.join(_JOIN_TIMEOUT_S)
      if w.process.is_alive():
        w.process.kill()
        w.process.join(_JOIN_TIMEOUT_S)
      w.conn.close()

  def __enter__(self) -> "ProcessPool":
    return self

  def __exit__(self, *exc_info) -> None:
    if exc_info[0] is None:
      self.close()
    else:
      self.terminate()


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], *, num_workers: int,
                start_method: str = "spawn", describe: Optional[Callable[[Any], str]] = None,
                initializer: Optional[Callable[..., None]] = None, initargs: tuple = ()
                ) -> Iterator[Any]:
  """fn(item) for every item, in order: in-process for one worker, else in a ProcessPool."""
  if num_workers <= 1:
    if initializer is not None:
      initializer(*initargs)
    yield from (fn(x) for x in items)
    return
  with ProcessPool(num_workers, start_method=start_method, initializer=initializer,
                   initargs=initargs) as pool:
    yield from pool.imap(fn, items, describe)
