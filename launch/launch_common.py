"""What the launchers share: the run's own flags, `--config.KEY=VALUE` overrides, dry runs, and
the plan (`th_distill.planning.plan`, run on this machine for the target's device count before anything
is created, copied, submitted or started)."""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

# One override of the experiment config, passed through unchanged to `th_distill.main`.
_OVERRIDE = re.compile(r"--config\.[A-Za-z_][A-Za-z0-9_.]*=")
# The repository the launcher is in: where the plan runs (`--config` is relative to it).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
  """The flags of the run itself, common to every launcher."""
  run = parser.add_argument_group(
    "run", "what every process runs; any further --config.KEY=VALUE is passed through"
  )
  run.add_argument(
    "--config",
    required=True,
    help="config file, relative to the repository root (e.g. configs/tiny.py)",
  )
  run.add_argument(
    "--workdir",
    required=True,
    help="output directory shared by all hosts: an absolute path on a "
    "filesystem every host mounts at the same place",
  )
  run.add_argument(
    "--python", default="python3", help="Python interpreter on the hosts (default: %(default)s)"
  )
  parser.add_argument(
    "--dry-run", action="store_true", help="print the commands instead of running them"
  )
  parser.add_argument(
    "--plan",
    choices=("compile", "check", "skip"),
    default="compile",
    help="first, on this machine, run `python -m th_distill.planning.plan` for the target's device count "
    "(needs th_distill installed here): 'compile' builds every program of the run for "
    "the mesh on simulated devices and prints XLA's memory per device (minutes for the "
    "paper's configs); 'check' only checks that the mesh fits the devices and divides the "
    "batches (seconds); 'skip' does neither. A mesh the plan refuses stops the launch "
    "before anything is created (default: %(default)s)",
  )


def parse_args(
  parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
  """Parses `argv`; returns the launcher's arguments and the `--config.KEY=VALUE` overrides.

  Anything else that the parser does not know is an error, as is a workdir that cannot be shared.
  """
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if not _OVERRIDE.match(a)]
  if unknown:
    parser.error(
      f"unrecognized arguments: {shlex.join(unknown)} (config overrides must be "
      "written as one word: --config.KEY=VALUE)"
    )
  if not posixpath.isabs(args.workdir):
    parser.error(
      f"argument --workdir: {args.workdir!r} is not an absolute path; every host must "
      "see the same directory: pass an absolute path on a shared filesystem"
    )
  return args, extra


def worker_command(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
  """The worker command line every process runs, as argv words:
  `PYTHON -m th_distill.main --config=... --workdir=... [--config.KEY=VALUE ...]`."""
  return [
    args.python,
    "-m",
    "th_distill.main",
    f"--config={args.config}",
    f"--workdir={args.workdir}",
    *overrides,
  ]


def positive_int(text: str) -> int:
  """argparse type: an integer >= 1."""
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def run_plan(args: argparse.Namespace, overrides: Sequence[str], devices: int) -> int:
  """Runs `th_distill.planning.plan` here for `devices` devices (`--plan`), its table on stderr; returns
  0 to go on, else the exit status to stop with (2: the plan refused the mesh, in one line)."""
  if args.plan == "skip":
    return 0
  command = [
    sys.executable,
    "-m",
    "th_distill.planning.plan",
    f"--config={args.config}",
    f"--devices={devices}",
    *overrides,
    *(["--programs="] if args.plan == "check" else []),
  ]
  print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
  status = subprocess.run(command, cwd=REPO, stdout=sys.stderr).returncode
  if status not in (0, 2):
    print(
      f"error: th_distill.planning.plan failed (exit code {status}); install th_distill on this "
      "machine (pip install -e .) or pass --plan=skip",
      file=sys.stderr,
    )
    return 1
  return status


def require_tools(*names: str) -> None:
  """Exits with an error unless every named program is on PATH."""
  missing = [name for name in names if shutil.which(name) is None]
  if missing:
    sys.exit(f"error: not found on PATH: {', '.join(missing)}")


def execute(commands: Sequence[Sequence[str]], dry_run: bool) -> None:
  """Runs the commands one after the other (stopping at the first failure), or prints them."""
  for command in commands:
    if dry_run:
      print(shlex.join(command))
    else:
      print(f"+ {shlex.join(command)}", file=sys.stderr, flush=True)
      subprocess.run(command, check=True)
