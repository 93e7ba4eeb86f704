r"""Runs th_distill on every worker of a Cloud TPU VM slice with `gcloud compute tpus tpu-vm`.

Steps, in order (each one a command; `--dry-run` prints them one per line instead):
  0. on this machine, `python -m th_distill.planning.plan` for the slice's JAX devices (from
     `--accelerator-type`, see `tpu_devices`): a mesh that does not fit them or does not divide
     the batches stops the launch here, before any VM exists (`--plan`; runs in dry runs too);
  1. `--create`: create the TPU VM slice;
  2. install the repository on all workers (unless `--skip-install`): clone `--repo-url` at
     `--ref`, or copy the git checkout `--local-dir` (tracked and untracked, non-ignored files);
     then `pip install -e .` and `pip install 'jax[tpu]'`;
  3. run `python -m th_distill.main --config=... --workdir=... [--config.KEY=VALUE ...]` on all
     workers at once (JAX finds the slice's topology itself);
  4. `--delete`: delete the TPU VM slice, also when the run failed.

  python launch/tpu_pod.py --name=th-v4 --zone=us-central2-b --create \
      --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --local-dir=. \
      --config=configs/tiny.py --workdir=/mnt/shared/th/tiny --config.seed=1 --dry-run
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import launch_common

# Where `--local-dir` is archived locally and copied to on each worker (home directory).
_ARCHIVE_NAME = "th_distill_src.tar.gz"
# TensorCores per JAX device by TPU generation: the number in an accelerator type counts
# TensorCores for v2, v3, v4 and v5p (v4 and v5p chips have two, seen as one device), and chips
# for v5e (v5litepod) and v6e (one device each).
_CORES_PER_DEVICE = {"v2": 1, "v3": 1, "v4": 2, "v5p": 2, "v5litepod": 1, "v5e": 1, "v6e": 1}


def tpu_devices(accelerator_type: str) -> int:
  """JAX devices of a slice of `accelerator_type` (e.g. v4-32 -> 16, v5litepod-16 -> 16);
  ValueError for a type it does not know."""
  generation, _, count = accelerator_type.rpartition("-")
  if generation not in _CORES_PER_DEVICE or not count.isdigit():
    raise ValueError(
      f"{accelerator_type!r} is not GENERATION-N with GENERATION one of "
      f"{', '.join(_CORES_PER_DEVICE)}"
    )
  return max(int(count) // _CORES_PER_DEVICE[generation], 1)


def build_parser() -> argparse.ArgumentParser:
  """The command-line interface."""
  parser = argparse.ArgumentParser(
    description=__doc__, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  tpu = parser.add_argument_group("TPU VM")
  tpu.add_argument("--name", required=True, help="name of the TPU VM slice")
  tpu.add_argument("--zone", required=True, help="e.g. us-central2-b")
  tpu.add_argument("--project", help="Google Cloud project (default: gcloud's configured one)")
  tpu.add_argument("--create", action="store_true", help="create the slice first")
  tpu.add_argument(
    "--accelerator-type",
    help="e.g. v4-32, v5litepod-16: the slice to create (--create) and the device "
    "count the plan checks the mesh against",
  )
  tpu.add_argument("--version", help="with --create: TPU VM runtime, e.g. tpu-ubuntu2204-base")
  tpu.add_argument("--spot", action="store_true", help="with --create: a Spot (pre-emptible) slice")
  tpu.add_argument(
    "--delete",
    action="store_true",
    help="delete the slice after the run, whether it succeeded or not",
  )
  code = parser.add_argument_group("code on the workers")
  source = code.add_mutually_exclusive_group()
  source.add_argument("--repo-url", help="git URL to clone on every worker")
  source.add_argument("--local-dir", help="local git checkout to copy to every worker")
  code.add_argument("--ref", help="with --repo-url: branch, tag or commit to check out")
  code.add_argument(
    "--remote-dir",
    default="th_distill",
    help="repository directory on the workers, relative to the home directory "
    "or absolute; replaced on install (default: %(default)s)",
  )
  code.add_argument(
    "--skip-install",
    action="store_true",
    help="reuse the repository and packages already on the workers",
  )
  launch_common.add_run_arguments(parser)
  return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Rejects combinations of flags that argparse alone cannot."""
  create_only = {"--version": args.version, "--spot": args.spot}
  if args.create and not (args.accelerator_type and args.version):
    parser.error("--create needs --accelerator-type and --version")
  if not args.create and any(create_only.values()):
    given = ", ".join(flag for flag, value in create_only.items() if value)
    parser.error(f"{given}: only used with --create")
  if args.ref and not args.repo_url:
    parser.error("--ref needs --repo-url")
  if args.skip_install and (args.repo_url or args.local_dir):
    parser.error("--skip-install cannot be combined with --repo-url or --local-dir")
  if not args.skip_install and not (args.repo_url or args.local_dir):
    parser.error("one of --repo-url, --local-dir or --skip-install is required")
  if args.local_dir and not os.path.exists(os.path.join(args.local_dir, ".git")):
    parser.error(f"--local-dir: {args.local_dir!r} is not the root of a git checkout")
  if args.plan != "skip" and not args.accelerator_type:
    parser.error(
      "--plan needs the slice's --accelerator-type (e.g. v4-32) for its device "
      "count; or pass --plan=skip"
    )
  if args.accelerator_type:
    try:
      tpu_devices(args.accelerator_type)
    except ValueError as e:
      parser.error(f"--accelerator-type: {e}")


def gcloud_tpu(verb: str, args: argparse.Namespace, *flags: str) -> list[str]:
  """`gcloud compute tpus tpu-vm VERB ...` with the slice's zone and project."""
  scope = [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])
  return ["gcloud", "compute", "tpus", "tpu-vm", verb, *flags, *scope]


def on_all_workers(args: argparse.Namespace, shell_command: str, *flags: str) -> list[str]:
  """Runs a shell command on every worker of the slice at once."""
  return gcloud_tpu("ssh", args, args.name, "--worker=all", f"--command={shell_command}", *flags)


def create_command(args: argparse.Namespace) -> list[str]:
  """Creates the slice."""
  flags = [args.name, f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  return gcloud_tpu("create", args, *flags, *(["--spot"] if args.spot else []))


def install_commands(args: argparse.Namespace) -> list[list[str]]:
  """Puts the repository in `--remote-dir` on every worker and installs it with JAX for TPU."""
  remote_dir = shlex.quote(args.remote_dir)
  pip = f"{shlex.quote(args.python)} -m pip install"
  install = f"cd {remote_dir} && {pip} -e . && {pip} 'jax[tpu]'"
  if args.repo_url:
    fetch = f"git clone --quiet {shlex.quote(args.repo_url)} {remote_dir}"
    if args.ref:
      fetch += f" && git -C {remote_dir} checkout --quiet {shlex.quote(args.ref)}"
    return [on_all_workers(args, f"rm -rf {remote_dir} && {fetch} && {install}")]
  archive = os.path.join(tempfile.gettempdir(), f"{args.name}-{_ARCHIVE_NAME}")
  pack = (
    f"cd {shlex.quote(args.local_dir)} && git ls-files -z --cached --others "
    f"--exclude-standard | tar -czf {shlex.quote(archive)} --null -T -"
  )
  unpack = f"mkdir -p {remote_dir} && tar -xzf {_ARCHIVE_NAME} -C {remote_dir}"
  return [
    ["sh", "-c", pack],
    gcloud_tpu("scp", args, archive, f"{args.name}:{_ARCHIVE_NAME}", "--worker=all"),
    on_all_workers(args, f"rm -rf {remote_dir} && {unpack} && {install}"),
  ]


# Tells th_distill.partitioning.initialize_distributed() to call jax.distributed.initialize(),
# which finds the slice's workers itself (TPU VMs do not say they are part of a slice in their
# environment).
ENV_DISTRIBUTED = "TH_DISTILL_DISTRIBUTED"


def run_on_workers(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
  """Starts the experiment on every worker at once from the repository directory.

  The ssh sessions get a terminal (`-tt`), so that a lost connection or a stopped launcher ends
  the run (SIGHUP) instead of leaving it holding the TPU.
  """
  run = shlex.join(["env", f"{ENV_DISTRIBUTED}=1", *launch_common.worker_command(args, overrides)])
  return on_all_workers(args, f"cd {shlex.quote(args.remote_dir)} && {run}", "--ssh-flag=-tt")


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args, overrides = launch_common.parse_args(parser, argv)
  check_args(parser, args)
  if args.plan != "skip":
    status = launch_common.run_plan(args, overrides, tpu_devices(args.accelerator_type))
    if status:
      return status
  commands = (
    ([create_command(args)] if args.create else [])
    + ([] if args.skip_install else install_commands(args))
    + [run_on_workers(args, overrides)]
  )
  teardown = [gcloud_tpu("delete", args, args.name, "--quiet")] if args.delete else []
  if not args.dry_run:
    launch_common.require_tools("gcloud", *(["git", "tar"] if args.local_dir else []))
  try:
    try:
      launch_common.execute(commands, args.dry_run)
    finally:
      launch_common.execute(teardown, args.dry_run)
  except subprocess.CalledProcessError as e:
    print(f"error: exit code {e.returncode} from: {shlex.join(e.cmd)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
