"""The binaries' entry point: `cli.run(main)` is `absl.app.run(main)` with the errors a user makes
(a bad flag or config value, an unknown preset, a missing file or directory) printed as one line,
`error: ...`, exit status 2, instead of a traceback. Bugs (any other exception) keep their
traceback. The library never imports this module (tests/test_layering.py)."""

from __future__ import annotations

import functools
import re
import sys
from typing import Any, Callable, NoReturn

from absl import app
from absl import flags
from absl import logging

# Raised for bad input by the library (ValueError, and MEDSFormatError, a ValueError) and by the
# file system (FileNotFoundError, NotADirectoryError, PermissionError, ...: OSError).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, app.UsageError)


def fail(message: str) -> NoReturn:
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(2)


def _describe(e: BaseException) -> str:
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    return f"{e.strerror}: {e.filename}"
  return str(e) or type(e).__name__


def _flag_error(e: flags.Error) -> str:
  """ml_collections puts the config file's traceback in the message: keep the flag and the
  exception's last line ("flag --config=x.py:huge: unknown preset 'huge': ...")."""
  msg = str(e)
  if "Traceback (most recent call last):" not in msg:
    return msg
  head = msg.split("Error whilst parsing config file")[0].strip()
  last = [line.strip() for line in msg.splitlines() if line.strip()][-1]
  return f"{head} {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', last)}"


def _parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
  try:
    return flags.FLAGS(argv, known_only=known_only)
  except flags.Error as e:  # unknown flag, bad value, a config file or preset that fails to load
    fail(f"{_flag_error(e)} (--help for usage)")
  except OSError as e:  # an override (--config.x=1) of a config file that failed to load
    fail(_describe(e))
  except (AttributeError, KeyError) as e:  # --config.x=1 with no field x (a locked config)
    x: Any = e
    while isinstance(x, BaseException) and x.args:  # ml_collections nests a KeyError's message
      x = x.args[0]
    fail(f"unknown config field {'; '.join(str(x).splitlines())} (--help for usage)")


def one_line_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Wraps an absl main so USER_ERRORS exit 2 with one line on stderr."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    try:
      return main(argv)
    except USER_ERRORS as e:
      logging.debug("%s", type(e).__name__, exc_info=True)  # the traceback, with --verbosity=1
      suffix = " (--help for usage)" if isinstance(e, app.UsageError) else ""
      fail(_describe(e) + suffix)

  return wrapped


def run(main: Callable[[list[str]], Any], pass_unknown_flags: bool = False) -> None:
  """pass_unknown_flags: flags absl does not know stay in main's argv (e.g. Beam's pipeline
  options) instead of failing the parse."""
  app.run(one_line_errors(main),
          flags_parser=functools.partial(_parse_flags, known_only=pass_unknown_flags))
