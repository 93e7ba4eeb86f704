"""Errors a user can act on, and the exit status of each.

A `RunError` says what is wrong and how to go on (the field, the file, the command); the command
lines print its message without a traceback (`th_distill.cli`) and exit with its `exit_code`:
1 the run cannot go on as asked, 2 a usage error (a bad flag or config value), 75 (EX_TEMPFAIL,
"try again") the run was pre-empted and the same command resumes it.
"""

from __future__ import annotations

EX_FAILURE, EX_USAGE, EX_TEMPFAIL = 1, 2, 75


class RunError(Exception):
  """A failure the user can act on; its message names the cause and the way forward."""

  exit_code = EX_FAILURE
