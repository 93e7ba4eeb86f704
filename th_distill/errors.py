"""Errors a user can act on, and the exit status of each.

A `RunError` says what is wrong and how to go on (the field, the file, the command); the command
lines print its message without a traceback (`th_distill.cli`) and exit with its `exit_code`:
1 the run cannot go on as asked, 2 a usage error (a bad flag or config value), 75 (EX_TEMPFAIL,
"try again") the run was pre-empted and the same command resumes it.
"""

from __future__ import annotations

import errno
import os
import re

EX_FAILURE, EX_USAGE, EX_TEMPFAIL = 1, 2, 75


class RunError(Exception):
  """A failure the user can act on; its message names the cause and the way forward."""

  exit_code = EX_FAILURE


class UsageError(RunError):
  """A bad flag or config value (exit status 2)."""

  exit_code = EX_USAGE


class NoSpace(RunError):
  """A write failed for lack of space: a full disk (ENOSPC) or the file-size limit (EFBIG)."""


# TensorStore (Orbax's array writer) reports a failed write as text: the OS error's code and the
# file, e.g. 'Failed writing: "/w/x/d/1f": Failed to write 357067 bytes ...: File too large
# [os_error_code='27']' (RESOURCE_EXHAUSTED or OUT_OF_RANGE).
_TENSORSTORE_OS_ERROR = re.compile(r"os_error_code='(\d+)'")
_TENSORSTORE_FILE = re.compile(r'Failed writing: "([^"]+)"')


def _tensorstore_os_error(error: BaseException) -> OSError | None:
  """The OSError a TensorStore error message (`_TENSORSTORE_OS_ERROR`) stands for, or None."""
  text = str(error)
  code = _TENSORSTORE_OS_ERROR.search(text)
  if code is None:
    return None
  file = _TENSORSTORE_FILE.search(text)
  number = int(code.group(1))
  return OSError(number, os.strerror(number), file.group(1) if file else None)


def space_error(error: BaseException) -> OSError | None:
  """The ENOSPC or EFBIG `OSError` that caused `error` (itself, or one of its causes: Orbax and
  the async writers wrap it; TensorStore's errors name it in their text), or None."""
  seen: set[int] = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    found = error if isinstance(error, OSError) else _tensorstore_os_error(error)
    if found is not None and found.errno in (errno.ENOSPC, errno.EFBIG):
      return found
    error = error.__cause__ or error.__context__
  return None


# JAX's words for a platform it cannot start (JAX_PLATFORMS names one this machine lacks, or
# XLA_FLAGS asks for 0 host devices).
_NO_BACKEND = "Unable to initialize backend"


def user_error(error: BaseException) -> RunError | None:
  """The RunError a command reports in one line for `error`: itself, a NoSpace for a full disk
  (`space_error`), a RunError naming the environment for a platform JAX cannot start; None for
  any other error (a bug: the command shows its traceback)."""
  if isinstance(error, RunError):
    return error
  space = space_error(error)
  if space is not None:
    return no_space(space)
  if isinstance(error, RuntimeError) and _NO_BACKEND in str(error):
    return RunError(
      f"JAX cannot start its devices ({str(error).splitlines()[0]}); check JAX_PLATFORMS="
      f"{os.environ.get('JAX_PLATFORMS', '')!r} and XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
      " (e.g. unset JAX_PLATFORMS, or --xla_force_host_platform_device_count=N with N >= 1)"
    )
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
