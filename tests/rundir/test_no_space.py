"""A full disk or the file-size limit (ENOSPC, EFBIG): one line naming what was being written, the
step and the last complete checkpoint, and no temporary file left behind."""

import contextlib
import errno
import os
import resource
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import write_micro_config_file

from th_distill import errors
from th_distill.data.batch import Batch
from th_distill.partitioning import Partitioner, make_mesh
from th_distill.rundir import checkpoints
from th_distill.training.guards import StepWatch
from th_distill.training.steps import create_train_state
from th_distill.training.trainer import Hook, Trainer


@contextlib.contextmanager
def file_size_limit(size):
  """Writes past `size` bytes fail with EFBIG (Python ignores SIGXFSZ)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


class LimitFrom(Hook):
  """Sets a file-size limit once step `step` is reached (after the earlier saves are on disk)."""

  def __init__(self, step, stack):
    self.step, self.stack = step, stack

  def before_step(self, trainer, step):
    if step == self.step:
      trainer.checkpointer.wait()
      self.stack.enter_context(file_size_limit(1000))


def test_a_failed_checkpoint_stops_in_one_line_naming_the_step_and_the_last_checkpoint(tmp_path):
  state = create_train_state({"w": jnp.ones(1000)}, optax.adam(0.1))

  def step_fn(state, batch, rng):
    metrics = {"train/loss": jnp.float32(1.0), "train/grad_norm": jnp.float32(1.0)}
    return state.apply_gradients(grads={"w": jnp.ones(1000)}), metrics

  batch = Batch(
    np.zeros((1, 2), np.int32),
    np.ones((1, 2), bool),
    np.zeros((1, 2), np.int32),
    np.ones((1, 2), np.float32),
  )
  directory = str(tmp_path / "checkpoints")
  trainer = Trainer(
    "offline",
    step_fn,
    lambda step, params: batch,
    state,
    partitioner=Partitioner(make_mesh()),
    checkpoint_dir=directory,
    steps=10,
    checkpoint_every=4,
    rng=jax.random.PRNGKey(0),
    guard=StepWatch("offline", "stop"),
  )
  with contextlib.ExitStack() as stack:
    trainer.add_hook(LimitFrom(5, stack))
    with pytest.raises(errors.NoSpace) as error:
      trainer.run()
  assert str(error.value).startswith(
    f"no space left while writing checkpoint 8 in {directory} at step 8; the last complete "
    "checkpoint is step 4 (the file-size limit: File too large)"
  )
  assert sorted(os.listdir(directory)) == ["4"]  # the unfinished checkpoint is removed


@pytest.mark.parametrize(
  "write",
  [
    lambda path: checkpoints.write_json(path, {"x": "y" * 10_000}),
    lambda path: checkpoints.save_arrays(path, {"x": np.zeros(10_000)}),
  ],
)
def test_a_failed_write_leaves_no_temporary_file(tmp_path, write):
  path = str(tmp_path / "file")
  with file_size_limit(1000), pytest.raises(OSError) as error:
    write(path)
  assert error.value.errno == errno.EFBIG
  assert os.listdir(tmp_path) == []


_COMMAND = """
import errno, sys
from absl import flags
from th_distill import cli
flags.FLAGS(sys.argv)
def body():
  try:
    raise OSError(errno.ENOSPC, "No space left on device", "/data/run/offline_dataset.npz")
  except OSError as e:
    raise RuntimeError("wrapped by a library") from e
cli.run_command(body)
"""


def test_a_full_disk_outside_training_is_one_line_with_status_1():
  result = subprocess.run(
    [sys.executable, "-c", _COMMAND], capture_output=True, text=True, timeout=120
  )
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1, result.stderr
  assert lines == [
    "error: no space left while writing /data/run/offline_dataset.npz (a full disk: No space "
    "left on device); free space and run the same command again to resume (finished work is "
    "kept)"
  ]


def test_a_full_disk_in_stage_1s_side_by_side_sfts_is_one_line(tmp_path):
  """Orbax reports a failed write as TensorStore text ('[os_error_code=27]'), and its cut-short
  writes as dozens of 'Event loop is closed' tracebacks: one line remains, naming the file."""
  config = write_micro_config_file(tmp_path / "micro.py", "c.regimes = ('offline',)")
  limited = (  # the config records pass; the SFTs' first checkpoint does not
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (8000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]));"
    " sys.argv = ['main', *sys.argv[1:]]; runpy.run_module('th_distill.main', run_name='__main__')"
  )
  result = subprocess.run(
    [sys.executable, "-c", limited, f"--config={config}", f"--workdir={tmp_path / 'w'}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
  errors_ = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors_) == 1, result.stderr[-3000:]
  assert errors_[0].startswith(
    f"error: no space left while writing {tmp_path / 'w' / 'stage1' / 'sft'}"
  )
  assert "(the file-size limit: File too large)" in errors_[0]
