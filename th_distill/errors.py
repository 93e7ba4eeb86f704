"""Errors a user can act on, and the exit status of each.

A `RunError` says what is wrong and how to go on (the field, the file, the command); the command
lines print its message without a traceback (`th_distill.cli`) and exit with its `exit_code`:
1 the run cannot go on as asked, 2 a usage error (a bad flag or config value), 75 (EX_TEMPFAIL,
"try again") the run was pre-empted and the same command resumes it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

EX_FAILURE, EX_USAGE, EX_TEMPFAIL = 1, 2, 75


class RunError(Exception):
  """A failure the user can act on; its message names the cause and the way forward."""

  exit_code = EX_FAILURE


class UsageError(RunError):
  """A bad flag or config value (exit status 2)."""

  exit_code = EX_USAGE


class NoSpace(RunError):
  """A write failed for lack of space: a full disk (ENOSPC) or the file-size limit (EFBIG)."""


def space_error(error: BaseException) -> OSError | None:
  """The ENOSPC or EFBIG `OSError` that caused `error` (itself, or one of its causes: Orbax and
  the async writers wrap it), or None."""
  seen: set[int] = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG):
      return error
    error = error.__cause__ or error.__context__
  return None


def no_space(error: OSError, what: str | None = None, where: str = "") -> NoSpace:
  """The one-line NoSpace of `error` (from `space_error`) while writing `what` (default: the
  error's file); `where` ends the sentence 'no space left while writing X' (e.g. ' at step 40;
  the last complete checkpoint is step 32')."""
  what = error.filename or what or "the run's files"
  limit = "the file-size limit" if error.errno == errno.EFBIG else "a full disk"
  return NoSpace(
    f"no space left while writing {what}{where} ({limit}: {error.strerror}); free space and run "
    "the same command again to resume (finished work is kept)"
  )


def replace_atomically(path: str, tmp: str, write: Callable[[str], object]) -> None:
  """`write(tmp)`, then renames `tmp` to `path`; a failed write (a full disk, a kill by an
  exception) removes `tmp`, so no temporary file survives it."""
  try:
    write(tmp)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
