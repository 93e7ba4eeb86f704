"""Asynchronous checkpoints (`rundir.checkpoints.RunCheckpointer`, real Orbax): `save` returns
before the checkpoint is on disk, `wait` / `latest_step` / `restore_latest` see it finished, the
saved state may be donated at once, and a kill during a save leaves the previous checkpoint."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from th_distill.rundir import checkpoints

# Large enough (64 MiB) that writing it outlasts the return of `save` by far.
SIZE = 16 * 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(value):
  return {"w": jnp.full(SIZE, value, jnp.float32), "step": jnp.int32(value)}


LIKE = jax.eval_shape(lambda: _state(0.0))


def _listing(directory):
  return sorted(n for n in os.listdir(directory) if not n.startswith("."))


def _final(directory, step):
  """Whether checkpoint `step` is finalised (renamed from its temporary name)."""
  names = _listing(directory)
  return str(step) in names and not any(n.startswith(f"{step}.orbax-checkpoint-tmp") for n in names)


def test_save_returns_before_the_checkpoint_is_written_and_wait_finishes_it(tmp_path):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  checkpointer.save(1, _state(1.0))
  assert not _final(tmp_path, 1)  # still being written
  checkpointer.wait()
  assert _final(tmp_path, 1)
  checkpointer.close()


def test_latest_step_and_restore_wait_for_the_save(tmp_path):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  checkpointer.save(1, _state(1.0))
  assert checkpointer.latest_step() == 1 and _final(tmp_path, 1)
  checkpointer.save(2, _state(2.0))
  restored = checkpointer.restore_latest(LIKE)
  assert int(restored["step"]) == 2 and float(restored["w"][-1]) == 2.0
  checkpointer.close()


def test_the_saved_state_may_be_donated_or_deleted_at_once(tmp_path):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path), max_to_keep=3)
  donated = _state(1.0)
  checkpointer.save(1, donated)
  overwrite = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 7, s), donate_argnums=0)
  overwrite(donated)
  deleted = _state(2.0)
  checkpointer.save(2, deleted)  # waits for save 1 first
  for leaf in jax.tree.leaves(deleted):
    leaf.delete()
  checkpointer.close()
  manager = ocp.CheckpointManager(str(tmp_path), item_handlers=ocp.StandardCheckpointHandler())
  for step in (1, 2):
    restored = manager.restore(step, args=ocp.args.StandardRestore(LIKE))
    np.testing.assert_array_equal(restored["w"], np.full(SIZE, float(step), np.float32))


def test_saving_a_step_being_saved_keeps_the_first(tmp_path):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  checkpointer.save(3, _state(3.0))
  checkpointer.save(3, _state(4.0))  # e.g. the end of a run on a checkpoint step
  checkpointer.close()
  restored = checkpoints.RunCheckpointer(str(tmp_path)).restore_latest(LIKE)
  assert int(restored["step"]) == 3


KILLED_DURING_SAVE = textwrap.dedent(
  f"""
  import os, signal, sys
  import jax.numpy as jnp
  from th_distill.rundir import checkpoints
  checkpointer = checkpoints.RunCheckpointer(sys.argv[1])
  checkpointer.save(1, {{"w": jnp.full({SIZE}, 1.0), "step": jnp.int32(1)}})
  checkpointer.wait()
  checkpointer.save(2, {{"w": jnp.full({SIZE}, 2.0), "step": jnp.int32(2)}})
  print(" ".join(sorted(os.listdir(sys.argv[1]))), flush=True)
  os.kill(os.getpid(), signal.SIGKILL)
  """
)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
  directory = str(tmp_path / "checkpoints")
  child = subprocess.run(
    [sys.executable, "-c", KILLED_DURING_SAVE, directory],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert child.returncode == -9, child.stderr
  at_kill = child.stdout.split()
  assert "1" in at_kill and "2" not in at_kill, at_kill  # killed while step 2 was written
  checkpointer = checkpoints.RunCheckpointer(directory)
  restored = checkpointer.restore_latest(LIKE)
  assert int(restored["step"]) == 1 and float(restored["w"][-1]) == 1.0
  assert _listing(directory) == ["1"]  # the temporary folder is gone, nothing set aside
  checkpointer.save(2, _state(2.0))
  checkpointer.close()
  assert int(checkpoints.RunCheckpointer(directory).restore_latest(LIKE)["step"]) == 2
