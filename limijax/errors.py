"""User-facing errors: one clear line, a non-zero exit, never a traceback.

Code that detects a mistake of the user's (a missing file, a bad key, a wrong shape)
raises :class:`UserError` with a message that names the file or key. Command-line
entry points run through :func:`cli_main`, which prints that message as a single line
on stderr and exits with status 2.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserError(Exception):
  """A mistake in the user's input, config or files; the message names it."""


def fail(message: str) -> None:
  """Print one line on stderr and exit with status 2."""
  line = ' '.join(str(message).split())  # one line, whatever the message held
  print(f'error: {line}', file=sys.stderr, flush=True)
  sys.exit(2)


def cli_main(main: Callable[[Sequence[str]], object]) -> Callable[[Sequence[str]], object]:
  """Wrap an ``absl.app`` main so a UserError ends as one line and exit status 2."""

  def wrapped(argv: Sequence[str]):
    try:
      return main(argv)
    except UserError as e:
      fail(str(e))

  return wrapped
