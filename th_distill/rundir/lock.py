"""One run per workdir: `WORKDIR/.lock`, held for the whole run.

The lock is an exclusive `flock` on `WORKDIR/.lock`, which names its holder (host, pid, start
time). The operating system drops the `flock` when its process dies, however it dies, so a lock
left by a dead run is free: the next run takes it over with a warning that names the dead
holder. A second run on a held workdir refuses at once with `WorkdirLocked`, naming the holder.
In a multi-process run only process 0 takes the lock; every process gets its verdict.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from th_distill import boundary
from th_distill.errors import RunError

LOCK_NAME = ".lock"


class WorkdirLocked(RunError):
  """Another live run holds the workdir (or the workdir cannot be used at all)."""


def _holder(fd: int) -> dict[str, Any] | None:
  """The holder recorded in the lock file open as `fd`, or None if it is empty or unreadable."""
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    holder = json.loads(os.read(fd, 4096).decode() or "null")
  except (UnicodeDecodeError, json.JSONDecodeError):
    return None
  return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any] | None) -> str:
  if holder is None:
    return "an unknown run"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
  return f"pid {holder.get('pid')} on host {holder.get('host')} (since {since})"


def _acquire(workdir: str) -> int | None:
  """Takes the lock of `workdir` (created if needed); returns its file descriptor, or None if
  the filesystem has no locks (with a warning). Raises WorkdirLocked if a live run holds it."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirLocked(
      f"--workdir={workdir} exists and is not a directory; choose another --workdir"
    )
  path = os.path.join(workdir, LOCK_NAME)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = boundary.open_fd(path)  # never through a link or into a FIFO
  except boundary.UnsafePath as e:
    raise WorkdirLocked(str(e)) from None
  except OSError as e:
    raise WorkdirLocked(
      f"--workdir={workdir} cannot be used: {e.strerror} ({path}); choose a writable --workdir"
    ) from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EAGAIN, errno.EACCES):
      holder = _holder(fd)
      os.close(fd)
      raise WorkdirLocked(
        f"--workdir={workdir} is in use by {_describe(holder)}; wait for that "
        "run to end (or stop it), or use another --workdir"
      ) from None
    os.close(fd)
    logging.warning(
      "Cannot lock %s (%s): nothing stops two runs from sharing this workdir.", path, e
    )
    return None
  stale = _holder(fd)
  if stale is not None:
    logging.warning(
      "Taking over the lock of %s, left by %s, which has ended without releasing "
      "it (killed or crashed).",
      workdir,
      _describe(stale),
    )
  os.ftruncate(fd, 0)
  os.pwrite(
    fd,
    json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode(),
    0,
  )
  return fd


def _release(fd: int | None) -> None:
  """Empties the lock file (the next run finds it free, not stale) and unlocks it. The file
  itself stays: removing it could let two runs lock two different files."""
  if fd is None:
    return
  os.ftruncate(fd, 0)
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the lock of `workdir` for the block (process 0 of a multi-process run takes it and
  every process raises WorkdirLocked if it could not). Raises WorkdirLocked at once if another
  live run holds it or `workdir` is not a directory."""
  fd, error = None, None
  if jax.process_index() == 0:
    try:
      fd = _acquire(workdir)
    except WorkdirLocked as e:
      error = e
  if jax.process_count() > 1:
    locked = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if error is None and not locked:
      error = WorkdirLocked(f"process 0 could not lock --workdir={workdir} (see its log)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    _release(fd)
