"""Parameter pytrees as Orbax checkpoints: one tree (`save_params`, a kept checkpoint of
`rundir.kept`) or named trees in one composite checkpoint (`save_param_trees`, stage 1's
models). Every call takes the Orbax lock of `checkpoints.one_orbax_call_at_a_time`."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp

from th_distill import boundary
from th_distill.rundir import checkpoints


@checkpoints.serialised
def save_params(path: str, params: Any) -> None:
  """Saves a parameter pytree as an Orbax checkpoint at `path` (absolute, must not exist; its
  folder and `path` must not be links: `boundary.check`)."""
  boundary.check(os.path.dirname(os.path.abspath(path)))
  boundary.check(path)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), params, force=True)
  checkpointer.wait_until_finished()


@checkpoints.serialised
def load_params(path: str, like: Any) -> Any:
  """Restores the pytree saved at `path` with the structure, shapes and shardings of `like`
  (arrays or `jax.ShapeDtypeStruct`s)."""
  return ocp.StandardCheckpointer().restore(os.path.abspath(path), checkpoints.abstract_tree(like))


@checkpoints.serialised
def save_param_trees(path: str, trees: dict[str, Any]) -> None:
  """Saves named parameter pytrees as one Orbax composite checkpoint at `path` (one item per
  name; collective on every process)."""
  boundary.check(os.path.dirname(os.path.abspath(path)))
  boundary.check(path)
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  checkpointer.save(
    os.path.abspath(path),
    ocp.args.Composite(**{name: ocp.args.StandardSave(tree) for name, tree in trees.items()}),
    force=True,
  )  # a plain Checkpointer saves synchronously


@checkpoints.serialised
def load_param_trees(path: str, like: dict[str, Any]) -> dict[str, Any]:
  """Restores the items of the composite checkpoint at `path` with the structure, shapes and
  shardings of `like` ({name: arrays or `jax.ShapeDtypeStruct`s})."""
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  restored = checkpointer.restore(
    os.path.abspath(path),
    ocp.args.Composite(
      **{
        name: ocp.args.StandardRestore(checkpoints.abstract_tree(tree))
        for name, tree in like.items()
      }
    ),
  )
  return {name: restored[name] for name in like}
