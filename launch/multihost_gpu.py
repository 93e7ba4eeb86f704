r"""Runs th_distill on several GPU hosts: one process per host, using all of that host's GPUs.

Two backends; the repository must already be installed on every host, at the same path
(`--repo-dir`, default: this checkout), e.g. on a shared filesystem.

  --backend=slurm  submits an sbatch script (one task per node, `srun PYTHON -m th_distill.main
                   ...`); JAX reads the job's layout from SLURM's environment variables.
                   `--dry-run` prints the script instead.
  --backend=ssh    starts one process per `--hosts` entry over ssh, with TH_DISTILL_COORDINATOR
                   (first host:--port), TH_DISTILL_NUM_PROCESSES and TH_DISTILL_PROCESS_ID set;
                   waits for all and fails if one fails (then stops the others). Each session has
                   a terminal (`ssh -tt`), so closing it stops its process (SIGHUP).
                   `--dry-run` prints the ssh commands, one per host, instead.

First, on this machine, `python -m th_distill.planning.plan` checks the run's mesh against the job's GPUs
(`--gpus-per-node` x nodes or hosts) and, with `--plan=compile` (the default), compiles every
program for it on simulated devices; a mesh that does not fit stops the launch before anything
is submitted or started (dry runs too).

  python launch/multihost_gpu.py --backend=slurm --nodes=2 --gpus-per-node=8 \
      --config=configs/t5_small.py --workdir=/shared/th/t5 --config.seed=1 --dry-run
  python launch/multihost_gpu.py --backend=ssh --hosts=gpu1,gpu2 \
      --config=configs/tiny.py --workdir=/shared/th/tiny --dry-run
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

import launch_common

_THIS_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds before the SLURM time limit at which the run gets SIGTERM (it checkpoints and exits).
_TERM_BEFORE_LIMIT_S = 120


def host_list(text: str) -> list[str]:
  """argparse type: comma-separated, distinct, non-empty host names."""
  hosts = [h.strip() for h in text.split(",")]
  if not all(hosts):
    raise argparse.ArgumentTypeError(f"empty host name in {text!r}")
  if len(set(hosts)) != len(hosts):
    raise argparse.ArgumentTypeError(f"a host appears twice in {text!r} (one process per host)")
  return hosts


def build_parser() -> argparse.ArgumentParser:
  """The command-line interface."""
  parser = argparse.ArgumentParser(
    description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--backend", required=True, choices=("slurm", "ssh"))
  parser.add_argument(
    "--repo-dir", default=_THIS_REPO, help="repository root on every host (default: %(default)s)"
  )
  slurm = parser.add_argument_group("--backend=slurm")
  slurm.add_argument("--nodes", type=launch_common.positive_int, help="number of nodes")
  parser.add_argument(
    "--gpus-per-node",
    type=launch_common.positive_int,
    default=8,
    help="GPUs of each node (slurm) or host (ssh): the device count the plan "
    "checks the mesh against is this times the nodes or hosts "
    "(default: %(default)s)",
  )
  slurm.add_argument("--job-name", default="th_distill", help="(default: %(default)s)")
  slurm.add_argument("--partition", help="SLURM partition")
  slurm.add_argument("--time", help="time limit, e.g. 24:00:00")
  slurm.add_argument(
    "--requeue",
    action="store_true",
    help="let SLURM requeue the job after pre-emption (it then resumes)",
  )
  slurm.add_argument(
    "--sbatch-option",
    action="append",
    default=[],
    metavar="OPTION",
    help="extra #SBATCH line, e.g. --sbatch-option=--account=myproj (repeatable)",
  )
  ssh = parser.add_argument_group("--backend=ssh")
  ssh.add_argument(
    "--hosts",
    type=host_list,
    help="comma-separated hosts ([user@]host); "
    "process i runs on the i-th, the first one is the coordinator",
  )
  ssh.add_argument(
    "--port",
    type=launch_common.positive_int,
    default=12345,
    help="coordinator port on the first host (default: %(default)s)",
  )
  launch_common.add_run_arguments(parser)
  return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Each backend needs its own flags."""
  if args.backend == "slurm" and args.nodes is None:
    parser.error("--nodes is required with --backend=slurm")
  if args.backend == "slurm" and args.hosts is not None:
    parser.error("--hosts: only used with --backend=ssh (SLURM picks the nodes)")
  if args.backend == "ssh" and args.hosts is None:
    parser.error("--hosts is required with --backend=ssh")
  if args.backend == "ssh" and args.nodes is not None:
    parser.error("--nodes: only used with --backend=slurm (with ssh, one process per host)")


def sbatch_script(args: argparse.Namespace, overrides: Sequence[str]) -> str:
  """The batch script: one task per node, each running the experiment on all the node's GPUs."""
  options = [
    f"--job-name={args.job_name}",
    f"--nodes={args.nodes}",
    "--ntasks-per-node=1",
    f"--gpus-per-node={args.gpus_per_node}",
    f"--signal=TERM@{_TERM_BEFORE_LIMIT_S}",
  ]
  options += [f"--partition={args.partition}"] if args.partition else []
  options += [f"--time={args.time}"] if args.time else []
  options += ["--requeue"] if args.requeue else []
  options += args.sbatch_option
  srun = ["srun", "--kill-on-bad-exit=1", *launch_common.worker_command(args, overrides)]
  lines = [
    "#!/bin/bash",
    *(f"#SBATCH {o}" for o in options),
    "",
    "set -euo pipefail",
    f"cd {shlex.quote(args.repo_dir)}",
    shlex.join(srun),
  ]
  return "\n".join(lines) + "\n"


def ssh_commands(args: argparse.Namespace, overrides: Sequence[str]) -> list[list[str]]:
  """One ssh command per host; host i runs process i, host 0 is the coordinator."""
  coordinator = f"{args.hosts[0].rpartition('@')[2]}:{args.port}"
  run = shlex.join(launch_common.worker_command(args, overrides))
  commands = []
  for process_id, host in enumerate(args.hosts):
    env = shlex.join(
      [
        "exec",
        "env",
        f"TH_DISTILL_COORDINATOR={coordinator}",
        f"TH_DISTILL_NUM_PROCESSES={len(args.hosts)}",
        f"TH_DISTILL_PROCESS_ID={process_id}",
      ]
    )
    remote = f"cd {shlex.quote(args.repo_dir)} && {env} {run}"
    commands.append(["ssh", "-tt", "-o", "BatchMode=yes", host, remote])
  return commands


def wait_for_all(processes: Sequence[subprocess.Popen]) -> tuple[int, int] | None:
  """Waits until every process has ended, or one failed: returns (its index, exit code) then."""
  while True:
    codes = [p.poll() for p in processes]
    for i, code in enumerate(codes):
      if code:
        return i, code
    if None not in codes:
      return None
    time.sleep(0.1)


def run_over_ssh(commands: Sequence[Sequence[str]], hosts: Sequence[str]) -> int:
  """Starts every command at once; if one fails, stops the others and reports it."""
  processes = [subprocess.Popen(c, stdin=subprocess.DEVNULL) for c in commands]
  try:
    failure = wait_for_all(processes)
  finally:
    for p in processes:
      if p.poll() is None:
        p.terminate()
        p.wait()
  if failure is None:
    return 0
  i, code = failure
  print(
    f"error: process {i} on {hosts[i]} exited with code {code}; stopped the other processes",
    file=sys.stderr,
  )
  return 1


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = launch_common.parse_args(parser, argv)
  check_args(parser, args)
  hosts = args.nodes if args.backend == "slurm" else len(args.hosts)
  status = launch_common.run_plan(args, overrides, hosts * args.gpus_per_node)
  if status:
    return status
  if args.backend == "slurm":
    script = sbatch_script(args, overrides)
    if args.dry_run:
      print(script, end="")
      return 0
    launch_common.require_tools("sbatch")
    return subprocess.run(["sbatch"], input=script, text=True).returncode
  commands = ssh_commands(args, overrides)
  if args.dry_run:
    print("\n".join(shlex.join(c) for c in commands))
    return 0
  launch_common.require_tools("ssh")
  return run_over_ssh(commands, args.hosts)


if __name__ == "__main__":
  sys.exit(main())
