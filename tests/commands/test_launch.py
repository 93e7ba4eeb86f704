"""The multi-host launchers in launch/: dry-run output, argument errors, execution against stub
`gcloud`, `sbatch`, `ssh` and Python executables (none of the real tools is needed), and the plan
that refuses a mesh before anything is created (`--plan`; the other tests pass --plan=skip)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.py")
MULTIHOST_GPU = os.path.join(REPO, "launch", "multihost_gpu.py")
RUN = ["--config=configs/tiny.py", "--workdir=/shared/th"]
OVERRIDES = ["--config.seed=3", "--config.student.steps=10", "--config.note=it's a test"]


def launch(
  script: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
  """Runs a launcher as a subprocess from the repository root (with --plan=skip unless `args`
  choose a --plan)."""
  plan = [] if any(a.startswith("--plan") for a in args) else ["--plan=skip"]
  return subprocess.run(
    [sys.executable, script, *args, *plan],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )


def dry_run(script: str, *args: str) -> list[str]:
  """The printed lines of a successful `--dry-run`."""
  result = launch(script, *args, "--dry-run")
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


def remote_argv(shell_command: str) -> list[str]:
  """The th_distill command (from the interpreter on) inside a remote shell command line."""
  words = shlex.split(shell_command)
  return words[words.index("-m") - 1 :]


def tpu_remote_command(words: list[str]) -> str:
  """The `--command=...` of a `gcloud compute tpus tpu-vm ssh` command."""
  (command,) = [w for w in words if w.startswith("--command=")]
  return command.removeprefix("--command=")


def write_stub(directory, name: str, body: str) -> None:
  """An executable shell script `directory/name`."""
  path = directory / name
  path.write_text("#!/bin/sh\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def stub_env(directory) -> dict[str, str]:
  """The environment with `directory` first on PATH."""
  return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


# --- TPU pod ---------------------------------------------------------------------------------

TPU = ["--name=th-pod", "--zone=us-central2-b", "--project=my-proj"]


def test_tpu_full_dry_run_prints_every_step_in_order():
  lines = dry_run(
    TPU_POD,
    *TPU,
    "--create",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
    "--repo-url=https://host/th.git",
    "--ref=v1",
    *RUN,
    *OVERRIDES,
    "--delete",
  )
  verbs = [shlex.split(line)[4] for line in lines]
  assert verbs == ["create", "ssh", "ssh", "delete"]
  create = shlex.split(lines[0])
  for flag in [
    "th-pod",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
    "--zone=us-central2-b",
    "--project=my-proj",
  ]:
    assert flag in create
  for line in lines[1:3]:
    assert "--worker=all" in shlex.split(line)
  install = tpu_remote_command(shlex.split(lines[1]))
  assert "git clone --quiet https://host/th.git th_distill" in install
  assert "checkout --quiet v1" in install
  assert "pip install -e ." in install and "pip install 'jax[tpu]'" in install
  assert shlex.split(lines[3])[-3:] == ["--quiet", "--zone=us-central2-b", "--project=my-proj"]


def test_tpu_worker_command_passes_overrides_through_quoted():
  (line,) = dry_run(TPU_POD, *TPU, "--skip-install", *RUN, *OVERRIDES)
  assert shlex.split(line)[:7] == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    "th-pod",
    "--worker=all",
  ]
  assert "--ssh-flag=-tt" in shlex.split(line)
  command = tpu_remote_command(shlex.split(line))
  assert command.startswith(
    "cd th_distill && env TH_DISTILL_DISTRIBUTED=1 python3 -m th_distill.main "
    "--config=configs/tiny.py"
  )
  assert remote_argv(command) == ["python3", "-m", "th_distill.main", *RUN, *OVERRIDES]


def test_tpu_local_dir_is_archived_copied_and_unpacked(tmp_path):
  (tmp_path / ".git").mkdir()
  lines = dry_run(TPU_POD, *TPU, f"--local-dir={tmp_path}", "--remote-dir=code/th", *RUN)
  pack, copy, install, run = (shlex.split(line) for line in lines)
  assert pack[:2] == ["sh", "-c"] and "git ls-files" in pack[2] and str(tmp_path) in pack[2]
  assert copy[4] == "scp" and "--worker=all" in copy and copy[6] == "th-pod:th_distill_src.tar.gz"
  assert "tar -xzf th_distill_src.tar.gz -C code/th" in tpu_remote_command(install)
  assert tpu_remote_command(run).startswith(
    "cd code/th && env TH_DISTILL_DISTRIBUTED=1 python3 -m th_distill.main"
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["--zone=z", *RUN, "--skip-install"], "--name"),
    (TPU + ["--skip-install", "--config=configs/tiny.py"], "--workdir"),
    (TPU + ["--skip-install", "--config=configs/tiny.py", "--workdir=runs/x"], "--workdir"),
    (TPU + ["--create", "--version=v", "--skip-install", *RUN], "--accelerator-type"),
    (TPU + ["--spot", "--skip-install", *RUN], "--spot"),
    (TPU + [*RUN], "--repo-url"),
    (TPU + ["--repo-url=u", "--local-dir=.", *RUN], "--local-dir"),
    (TPU + ["--local-dir=launch", *RUN], "--local-dir"),
    (TPU + ["--skip-install", *RUN, "--config.seed", "3"], "--config.seed"),
    (TPU + ["--skip-install", *RUN, "--bogus=1"], "--bogus"),
  ],
)
def test_tpu_bad_arguments_are_argparse_errors(args, message):
  result = launch(TPU_POD, *args, "--dry-run")
  assert result.returncode == 2 and not result.stdout
  assert "error:" in result.stderr and message in result.stderr


def test_tpu_deletes_the_slice_even_when_the_run_fails(tmp_path):
  log = tmp_path / "gcloud.log"
  write_stub(
    tmp_path, "gcloud", f'echo "$4" >> {log}\ncase "$*" in *th_distill.main*) exit 7;; esac\n'
  )
  result = launch(TPU_POD, *TPU, "--skip-install", "--delete", *RUN, env=stub_env(tmp_path))
  assert result.returncode == 1 and "exit code 7" in result.stderr
  assert log.read_text().split() == ["ssh", "delete"]


# --- multi-host GPU: SLURM -------------------------------------------------------------------


def test_slurm_dry_run_prints_the_sbatch_script():
  script = "\n".join(
    dry_run(
      MULTIHOST_GPU,
      "--backend=slurm",
      "--nodes=4",
      "--gpus-per-node=2",
      "--partition=gpu",
      "--time=2:00:00",
      "--requeue",
      "--sbatch-option=--account=lab",
      *RUN,
      *OVERRIDES,
    )
  )
  assert script.startswith("#!/bin/bash\n")
  for option in [
    "--nodes=4",
    "--ntasks-per-node=1",
    "--gpus-per-node=2",
    "--partition=gpu",
    "--time=2:00:00",
    "--requeue",
    "--account=lab",
    "--signal=TERM@",
  ]:
    assert f"#SBATCH {option}" in script
  (srun,) = [line for line in script.splitlines() if line.startswith("srun ")]
  assert "python3 -m th_distill.main --config=configs/tiny.py" in srun
  assert remote_argv(srun) == ["python3", "-m", "th_distill.main", *RUN, *OVERRIDES]
  assert f"cd {REPO}" in script


def test_slurm_submits_the_script_with_sbatch(tmp_path):
  write_stub(tmp_path, "sbatch", f"cat > {tmp_path / 'job.sh'}\n")
  result = launch(MULTIHOST_GPU, "--backend=slurm", "--nodes=2", *RUN, env=stub_env(tmp_path))
  assert result.returncode == 0, result.stderr
  printed = launch(MULTIHOST_GPU, "--backend=slurm", "--nodes=2", *RUN, "--dry-run").stdout
  assert (tmp_path / "job.sh").read_text() == printed


# --- multi-host GPU: ssh ---------------------------------------------------------------------

HOSTS = ["alice@gpu-a", "gpu-b", "gpu-c"]


def test_ssh_dry_run_prints_one_command_per_host():
  lines = dry_run(
    MULTIHOST_GPU,
    "--backend=ssh",
    f"--hosts={','.join(HOSTS)}",
    "--port=2222",
    "--repo-dir=/srv/th",
    *RUN,
    *OVERRIDES,
  )
  assert len(lines) == len(HOSTS)
  for process_id, (host, line) in enumerate(zip(HOSTS, lines)):
    words = shlex.split(line)
    assert words[:5] == ["ssh", "-tt", "-o", "BatchMode=yes", host] and len(words) == 6
    remote = shlex.split(words[5])
    assert remote[:3] == ["cd", "/srv/th", "&&"]
    assert remote[3:8] == [
      "exec",
      "env",
      "TH_DISTILL_COORDINATOR=gpu-a:2222",
      f"TH_DISTILL_NUM_PROCESSES={len(HOSTS)}",
      f"TH_DISTILL_PROCESS_ID={process_id}",
    ]
    assert remote_argv(words[5]) == ["python3", "-m", "th_distill.main", *RUN, *OVERRIDES]


def ssh_stubs(tmp_path, python_body: str) -> list[str]:
  """A stub `ssh` that runs the remote command locally, and `--python` of a stub interpreter."""
  write_stub(tmp_path, "ssh", 'for remote; do :; done\nexec sh -c "$remote"\n')
  write_stub(tmp_path, "fakepython", python_body)
  return [f"--python={tmp_path / 'fakepython'}", f"--repo-dir={tmp_path}"]


def test_ssh_runs_every_process_and_waits(tmp_path):
  flags = ssh_stubs(
    tmp_path,
    'echo "$TH_DISTILL_PROCESS_ID/$TH_DISTILL_NUM_PROCESSES '
    '$TH_DISTILL_COORDINATOR $*" > "out.$TH_DISTILL_PROCESS_ID"\n',
  )
  result = launch(
    MULTIHOST_GPU,
    "--backend=ssh",
    "--hosts=h0,h1",
    *flags,
    *RUN,
    "--config.seed=5",
    env=stub_env(tmp_path),
  )
  assert result.returncode == 0, result.stderr
  for i in range(2):
    assert (tmp_path / f"out.{i}").read_text().split() == [
      f"{i}/2",
      "h0:12345",
      "-m",
      "th_distill.main",
      *RUN,
      "--config.seed=5",
    ]


def test_ssh_fails_when_one_process_fails_and_stops_the_others(tmp_path):
  flags = ssh_stubs(
    tmp_path, '[ "$TH_DISTILL_PROCESS_ID" = 1 ] && exit 3\nexec sleep 5 >/dev/null 2>&1\n'
  )
  start = time.monotonic()
  result = launch(
    MULTIHOST_GPU, "--backend=ssh", "--hosts=h0,h1,h2", *flags, *RUN, env=stub_env(tmp_path)
  )
  assert time.monotonic() - start < 4
  assert result.returncode == 1
  assert "process 1 on h1 exited with code 3" in result.stderr


@pytest.mark.parametrize(
  "args, message",
  [
    (["--backend=mpi", *RUN], "--backend"),
    (["--backend=slurm", *RUN], "--nodes"),
    (["--backend=slurm", "--nodes=0", *RUN], "--nodes"),
    (["--backend=slurm", "--nodes=2", "--hosts=a,b", *RUN], "--hosts"),
    (["--backend=ssh", *RUN], "--hosts"),
    (["--backend=ssh", "--hosts=a,,b", *RUN], "--hosts"),
    (["--backend=ssh", "--hosts=a,a", *RUN], "--hosts"),
    (["--backend=ssh", "--hosts=a", "--nodes=1", *RUN], "--nodes"),
    (["--backend=ssh", "--hosts=a", "--config=configs/tiny.py"], "--workdir"),
    (["--backend=ssh", "--hosts=a", *RUN, "--config.seed", "3"], "--config.seed"),
  ],
)
def test_gpu_bad_arguments_are_argparse_errors(args, message):
  result = launch(MULTIHOST_GPU, *args, "--dry-run")
  assert result.returncode == 2 and not result.stdout
  assert "error:" in result.stderr and message in result.stderr


# --- the plan, before anything is created ----------------------------------------------------

sys.path.insert(0, os.path.join(REPO, "launch"))
import tpu_pod  # noqa: E402


@pytest.mark.parametrize(
  "accelerator_type, devices",
  [("v4-32", 16), ("v5p-128", 64), ("v5litepod-16", 16), ("v6e-8", 8), ("v3-8", 8)],
)
def test_tpu_devices_of_an_accelerator_type(accelerator_type, devices):
  assert tpu_pod.tpu_devices(accelerator_type) == devices


def test_tpu_plan_refuses_a_mesh_larger_than_the_slice_before_creating_it(tmp_path):
  log = tmp_path / "gcloud.log"
  write_stub(tmp_path, "gcloud", f'echo "$4" >> {log}\n')
  result = launch(
    TPU_POD,
    *TPU,
    "--create",
    "--accelerator-type=v4-32",
    "--version=v",
    "--repo-url=u",
    *RUN,
    "--config.mesh.data=1",
    "--config.mesh.fsdp=32",
    "--plan=check",
    "--delete",
    env=stub_env(tmp_path),
  )
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2 and not result.stdout, result.stderr
  assert len(errors) == 1 and "needs 32 devices, but 16 are available" in errors[0]
  assert not log.exists()  # no slice created (nor deleted)


def test_gpu_plan_refuses_a_mesh_that_does_not_split_the_batch():
  result = launch(
    MULTIHOST_GPU,
    "--backend=slurm",
    "--nodes=3",
    "--gpus-per-node=8",
    *RUN,
    "--plan=check",
    "--dry-run",
  )
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2 and not result.stdout, result.stderr
  assert len(errors) == 1
  assert "data x fsdp = 24 does not divide teacher.batch_size = 32" in errors[0]


def test_tpu_dry_run_plans_the_slice_then_prints_the_commands():
  result = launch(
    TPU_POD,
    *TPU,
    "--skip-install",
    "--accelerator-type=v5litepod-16",
    *RUN,
    "--config.mesh.fsdp=4",
    "--plan=check",
    "--dry-run",
  )
  assert result.returncode == 0, result.stderr
  assert "-m th_distill.planning.plan --config=configs/tiny.py --devices=16" in result.stderr
  assert "on mesh (data, fsdp, model) = (4, 4, 1): fits 16 devices" in result.stderr
  (line,) = result.stdout.splitlines()  # the plan's output stays off the commands
  assert shlex.split(line)[4] == "ssh"


def test_tpu_plan_needs_the_accelerator_type():
  result = launch(TPU_POD, *TPU, "--skip-install", *RUN, "--plan=check", "--dry-run")
  assert result.returncode == 2 and "--plan needs the slice's --accelerator-type" in result.stderr
  result = launch(TPU_POD, *TPU, "--skip-install", "--accelerator-type=v9-8", *RUN, "--dry-run")
  assert result.returncode == 2 and "--accelerator-type: 'v9-8' is not" in result.stderr
