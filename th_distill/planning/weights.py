"""Bytes per device of a model's weights on a mesh, from the shapes alone: the stored shards
(`param_bytes`: each parameter divided by the mesh axes its logical names map to) and the
layers all-gathered for use (`gathered_bytes`), for `th_distill.planning.memory`."""

from __future__ import annotations

import math

import jax

from th_distill.models import LAYERS_AXIS, module_of
from th_distill.models.interface import ModelConfig
from th_distill.partitioning import boxed_param_shapes, mesh_axes

_BYTES = {"float32": 4, "bfloat16": 2}
# Layers of gathered weights alive at once per model on a memory-aware schedule: the one in use
# and the next one, whose all-gather overlaps the current layer's compute.
GATHERED_LAYERS = 2


def _group_bytes(cfg: ModelConfig, mesh_shape: dict[str, int], dtype: str) -> dict[str, float]:
  """{top-level parameter group (a layer, the embedding, ...): bytes per device in `dtype`}."""
  groups: dict[str, float] = {}
  boxes = jax.tree_util.tree_leaves_with_path(
    boxed_param_shapes(module_of(cfg)), is_leaf=lambda x: hasattr(x, "names")
  )
  for path, box in boxes:
    shape = box.value.shape
    split = math.prod(
      math.prod(mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
      for axes in mesh_axes(box.names, shape, mesh_shape)
      if axes is not None
    )
    name = str(path[0].key)
    # Scanned layers (a leading `layers` axis) count as one group per layer, as unrolled ones.
    names = [f"{name}_{i}" for i in range(shape[0])] if box.names[0] == LAYERS_AXIS else [name]
    for group in names:
      groups[group] = groups.get(group, 0.0) + math.prod(shape) * _BYTES[dtype] / split / len(names)
  return groups


def param_bytes(cfg: ModelConfig, mesh_shape: dict[str, int], dtype: str) -> float:
  """Bytes per device of the parameters of a `cfg` model stored in `dtype`."""
  return sum(_group_bytes(cfg, mesh_shape, dtype).values())


def gathered_bytes(
  cfg: ModelConfig, mesh_shape: dict[str, int], dtype: str, layers: int | None = GATHERED_LAYERS
) -> float:
  """Bytes per device of a `cfg` model's weights in use, stored in `dtype`: all-gathered over
  data x fsdp (still split over model) and held in the compute dtype; the `layers` largest
  parameter groups at once (None: all of them). 0 when the stored shards are used as they are
  (no fsdp and the storage dtype is the compute dtype)."""
  if mesh_shape["fsdp"] == 1 and dtype == cfg.dtype:
    return 0.0
  whole = {**mesh_shape, "data": 1, "fsdp": 1}
  sizes = sorted(_group_bytes(cfg, whole, cfg.dtype).values(), reverse=True)
  return sum(sizes[:layers])
