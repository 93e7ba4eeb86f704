"""The run directory is a boundary: th_distill writes only files it creates there itself.

Every writer of a run directory (or a study's) goes through this module. A path it writes, and
every folder it makes (`make_dirs`), must not be a symbolic link or a special file (a FIFO):
such a path is refused with `UnsafePath`, naming it, instead of being written through (which
would truncate or fill a file outside the directory). Files are opened with `O_NOFOLLOW` (a link
planted between the check and the open is refused too) and temporary files are created with
`O_EXCL` (never an existing file). The workdir itself may be a link: the user names it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from typing import IO

from th_distill.errors import RunError

_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(RunError):
  """A path th_distill would write is a link or a special file it did not create."""


def _refusal(path: str, what: str) -> UnsafePath:
  return UnsafePath(
    f"{path} is {what}; th_distill writes only files it creates inside the run directory, never "
    "through a link or a special file: remove it (or use another --workdir)"
  )


def _check_one(path: str) -> None:
  try:
    mode = os.lstat(path).st_mode
  except FileNotFoundError:
    return
  if stat.S_ISLNK(mode):
    raise _refusal(path, "a symbolic link")
  if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
    raise _refusal(path, "a special file (not a regular file or folder)")


def check(path: str) -> None:
  """Raises UnsafePath if `path` is a symbolic link or a special file (a path that does not
  exist yet passes). Its folder was checked when it was made (`make_dirs`)."""
  _check_one(path)


def make_dirs(path: str) -> None:
  """`os.makedirs(path, exist_ok=True)`, refusing a `path` that is a link or a special file."""
  check(path)
  os.makedirs(path, exist_ok=True)
  check(path)  # created by another process meanwhile


def _open_fd(path: str, flags: int) -> int:
  try:
    fd = os.open(path, flags | os.O_NONBLOCK, 0o644)  # O_NONBLOCK: a FIFO does not block
  except OSError:
    _check_one(path)  # a link or FIFO planted after the check (ELOOP, ENXIO): refused by name
    raise
  if not stat.S_ISREG(os.fstat(fd).st_mode):
    os.close(fd)
    raise _refusal(path, "a special file (not a regular file or folder)")
  os.set_blocking(fd, True)
  return fd


def open_fd(path: str) -> int:
  """A read-write file descriptor of the regular file `path`, created if needed (a lock file),
  never through a link or into a special file."""
  check(path)
  return _open_fd(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC)


def open_append(path: str) -> IO[str]:
  """`path` open for appending text (created if needed), never through a link."""
  check(path)
  fd = _open_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC)
  return os.fdopen(fd, "a", encoding="utf-8")


@contextlib.contextmanager
def _new_file(path: str, binary: bool) -> Iterator[IO]:
  """`path` created exclusively (a leftover of a killed run with the same name is removed first:
  removing a link removes the link, not its target; `O_EXCL` refuses one planted meanwhile)."""
  if os.path.lexists(path):
    os.remove(path)
  fd = _open_fd(path, _NEW)
  with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
    yield f


def write_atomically(
  path: str, write: Callable[[IO], object], binary: bool = False, suffix: str = ""
) -> None:
  """`write(f)` into a new temporary file beside `path` (`<path>.tmp<pid><suffix>`, created
  exclusively), then renames it to `path`; a failed write (a full disk, an exception) removes
  the temporary file. UnsafePath if `path` is a link or a special file."""
  check(path)
  tmp = f"{path}.tmp{os.getpid()}{suffix}"
  try:
    with _new_file(tmp, binary) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.lexists(tmp) and not os.path.isdir(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (`write_atomically`)."""
  write_atomically(path, lambda f: f.write(text))
