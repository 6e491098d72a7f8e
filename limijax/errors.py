"""User-facing errors: one clear line, a non-zero exit, never a traceback.

Code that detects a mistake of the user's (a missing file, a bad key, a wrong shape)
raises :class:`UserError` with a message that names the file or key. Command-line
entry points run through :func:`cli_main`, which prints that message as a single line
on stderr and exits with status 2.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable, Sequence


class UserError(Exception):
  """A mistake in the user's input, config or files; the message names it."""


class ConfigError(UserError, ValueError):
  """A config key with a value it cannot take; the message names the key."""

  def __init__(self, key: str, message: str):
    super().__init__(f'config key {key}: {message}')
    self.key = key


def fail(message: str) -> None:
  """Print one line on stderr and exit with status 2."""
  line = ' '.join(str(message).split())  # one line, whatever the message held
  print(f'error: {line}', file=sys.stderr, flush=True)
  sys.exit(2)


class QuietLibraries(logging.Filter):
  """Keeps other libraries' INFO lines (TFDS loading its dataset info, Orbax's per-save
  chatter) and two TFDS warnings of no use to a user (:attr:`_ADVICE`) out of a
  command's output: below WARNING
  only limijax's own lines pass. Every command installs it on absl's handler
  (:func:`cli_main`); ``python -m limijax.main --library_logs`` removes it."""

  _PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
  # TFDS's warnings that say nothing to a limijax user: decoding PNGs with PIL instead of
  # OpenCV, and the prepared copy's own named configuration.
  _ADVICE = ('OpenCV is not installed', 'Using custom data configuration')

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return not str(record.msg).startswith(self._ADVICE)
    return os.path.abspath(record.pathname).startswith(self._PACKAGE)


QUIET_LIBRARIES = QuietLibraries()


def cli_main(main: Callable[[Sequence[str]], object],
             positional: bool = False) -> Callable[[Sequence[str]], object]:
  """Wrap an ``absl.app`` main so a UserError ends as one line and exit status 2. Unless
  the command takes ``positional`` arguments, any left after the flags is refused."""

  def wrapped(argv: Sequence[str]):
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.get_absl_handler().addFilter(QUIET_LIBRARIES)
    try:
      if not positional and len(argv) > 1:
        raise UserError(f'unexpected arguments: {" ".join(argv[1:])}')
      return main(argv)
    except UserError as e:
      fail(str(e))

  return wrapped


def unknown_key_line(argv: Sequence[str], error: Exception) -> str | None:
  """``config key KEY does not exist (did you mean NAME?)`` for an override that names a
  key the config lacks, ml_collections' KeyError or AttributeError turned into one line
  with the key as typed (``data.flip``); None for any other error."""
  if not isinstance(error, (KeyError, AttributeError)):
    return None
  text = str(error.args[0] if error.args else error)
  found = re.search(r"\\?'([A-Za-z_]\w*)\\?'", text)  # quoted, the quotes maybe escaped
  if not found:
    return None
  leaf = found.group(1)
  typed = [a[len('--config.'):].split('=', 1)[0] for a in argv if a.startswith('--config.')]
  key = next((t for t in typed if t.split('.')[-1] == leaf), leaf)
  hint = re.search(r'Did you mean "([\w]+)"', text)
  if hint:
    return (f'config key {key} does not exist (did you mean '
            f'{key.rsplit(".", 1)[0] + "." if "." in key else ""}{hint.group(1)}?)')
  return f'config key {key} does not exist'


def _parse_flags(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # an override names a key the config lacks
    fail(unknown_key_line(argv, e) or f'{type(e).__name__}: {e}')
  except Exception as e:  # pylint: disable=broad-except
    # absl flag errors, a config file that is missing or fails to load, a value of the
    # wrong type for a locked config key: all are the user's to fix, none a traceback.
    fail(f'{type(e).__name__}: {e}' if not isinstance(e, flags.Error) else str(e))


def run(main: Callable[[Sequence[str]], object], positional: bool = False) -> None:
  """``absl.app.run`` for limijax commands: flag and config errors and UserErrors end as
  one line on stderr and exit status 2 (see :func:`cli_main` for ``positional``)."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(cli_main(main, positional), flags_parser=_parse_flags)
