"""Device mesh, logical-axis rules, sharded initialisation and placement, multi-host start-up.

The model annotates every parameter and activation with logical axis names (`batch, length, embed,
mlp, heads, kv_heads, kv, vocab, relpos_buckets`, and `layers` for the stacked parameters of a model with
`scan_layers`, never sharded); `DEFAULT_RULES` maps them onto the three mesh axes:

- `data`: pure data parallelism (the batch is split, parameters are replicated);
- `fsdp`: the batch is split *and* parameters and optimiser state are sharded along `embed`
  (ZeRO-3 / fully sharded data parallelism: XLA all-gathers the weights where they are used);
- `model`: tensor parallelism over `heads`, `mlp` and `vocab` (Megatron-style).

A rule only applies to a dimension it divides; otherwise that dimension is replicated (so tiny
models run on any mesh). The same code runs on one CPU device, on 8 forced host devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`) and on a TPU pod; results depend on the
mesh only through float rounding.

Multi-host: `initialize_distributed()` starts `jax.distributed` when the process is one of several
(see its docstring); batches are then assembled from each host's own rows (`shard_batch`), and
every jitted function sees global arrays.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from th_distill.models import init_params
from th_distill.models.interface import LanguageModel

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")

# (logical axis, mesh axis or axes). Earlier rules win: an activation [batch, length, embed]
# puts `batch` on (data, fsdp), so `embed` finds fsdp taken and stays replicated, while a weight
# [embed, mlp] is sharded on both fsdp and model.
LogicalRules = tuple[tuple[str, Any], ...]
DEFAULT_RULES: LogicalRules = (
  ("batch", BATCH_AXES),
  ("vocab", "model"),
  ("heads", "model"),
  ("kv_heads", "model"),  # the key/value heads of grouped-query attention (decoder-only family)
  ("mlp", "model"),
  ("embed", "fsdp"),
  ("kv", None),
  ("length", None),
  ("relpos_buckets", None),
  ("layers", None),  # the leading axis of scanned (stacked) layer parameters
)

# Environment variables of an explicitly launched multi-process job (launch/multihost_gpu.py).
ENV_COORDINATOR = "TH_DISTILL_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "TH_DISTILL_NUM_PROCESSES"
ENV_PROCESS_ID = "TH_DISTILL_PROCESS_ID"
# Set to 1 to call jax.distributed.initialize() with no arguments (JAX finds the cluster itself,
# e.g. the workers of a Cloud TPU slice; launch/tpu_pod.py sets it).
ENV_DISTRIBUTED = "TH_DISTILL_DISTRIBUTED"


def initialize_distributed() -> bool:
  """Starts `jax.distributed` if this process is one of several; returns whether it did.

  Explicit launch: the three `TH_DISTILL_*` variables above (coordinator `host:port`, number of
  processes, this process's id), as `launch/multihost_gpu.py --backend=ssh` sets them. Managed
  clusters: with `TH_DISTILL_DISTRIBUTED=1` (a Cloud TPU slice, set by `launch/tpu_pod.py`) or
  under SLURM with several tasks, JAX finds the topology itself. Otherwise (one process) nothing
  is done. Must run before any JAX computation.
  """
  if ENV_COORDINATOR in os.environ:
    try:
      num_processes = int(os.environ[ENV_NUM_PROCESSES])
      process_id = int(os.environ[ENV_PROCESS_ID])
    except (KeyError, ValueError) as e:
      raise ValueError(
        f"{ENV_COORDINATOR} is set, so {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} "
        f"must be integers too: {e}"
      ) from e
    jax.distributed.initialize(os.environ[ENV_COORDINATOR], num_processes, process_id)
  elif os.environ.get(ENV_DISTRIBUTED) == "1" or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  else:
    return False
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def is_main_process() -> bool:
  """Process 0 writes logs, metrics and reports; every process takes part in checkpoints."""
  return jax.process_index() == 0


def resolve_mesh_shape(data: int, fsdp: int, model: int, num_devices: int) -> tuple[int, ...]:
  """(data, fsdp, model) with at most one -1 replaced by the devices left; checks the product."""
  shape = [data, fsdp, model]
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(
      f"mesh (data, fsdp, model) = {tuple(shape)}: each must be positive, and at "
      "most one may be -1 (= the remaining devices)."
    )
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"mesh {tuple(shape)}: {known} does not divide {num_devices} devices.")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ValueError(
      f"mesh (data, fsdp, model) = {tuple(shape)} needs {math.prod(shape)} "
      f"devices, but {num_devices} are available; use -1 for one axis to take "
      "the rest."
    )
  return tuple(shape)


def make_mesh(
  data: int = -1, fsdp: int = 1, model: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(data, fsdp, model, len(devices))
  grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def mesh_axes(
  names: Sequence[str | None],
  shape: Sequence[int],
  mesh_shape: dict[str, int],
  rules: LogicalRules = DEFAULT_RULES,
) -> list[Any]:
  """Mesh axes (a PartitionSpec's entries) of an array of `shape` with logical `names` under
  `rules`; a mesh axis (or group) that does not divide its dimension is dropped (replicated)."""
  spec = []
  for size, axes in zip(shape, nn.logical_to_mesh_axes(tuple(names), rules)):
    if axes is not None:
      parts = (axes,) if isinstance(axes, str) else tuple(axes)
      if size % math.prod(mesh_shape[a] for a in parts):
        axes = None
    spec.append(axes)
  return spec


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.meta.AxisMetadata)


class Partitioner:
  """Places arrays on a mesh following logical-axis rules, and compiles functions for it.

  Usage:
    partitioner = Partitioner(make_mesh(data=2, fsdp=2, model=2))
    params = partitioner.init_params(model, rng)            # created sharded
    step = partitioner.jit(fn, in_shardings=..., out_shardings=..., donate_argnums=0,
                           static=(settings,))      # compiled fn(*arrays, *static)
    batch = partitioner.shard_batch(numpy_batch)            # global [B, ...], split over batch

  Compiled functions are traced inside `activate()` (the mesh and the rules), so the model's
  activation constraints take effect.
  """

  def __init__(self, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    self.mesh = mesh
    self.rules = tuple(rules)

  @classmethod
  def from_config(cls, mesh_config: ml_collections.ConfigDict) -> Partitioner:
    return cls(make_mesh(mesh_config.data, mesh_config.fsdp, mesh_config.model))

  @property
  def platform(self) -> str:
    """The mesh's devices' platform ('cpu', 'gpu', 'tpu')."""
    return self.mesh.devices.flat[0].platform

  @property
  def data_parallel_size(self) -> int:
    """Number of ways the batch is split (mesh data x fsdp)."""
    return self.mesh.shape["data"] * self.mesh.shape["fsdp"]

  @contextlib.contextmanager
  def activate(self) -> Iterator[None]:
    """The mesh and the logical-axis rules, for tracing the model's sharding constraints."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  # Shardings.

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self, ndim: int = 1, axis: int = 0) -> NamedSharding:
    """Dimension `axis` (the batch: 0, or 1 for a stack of batches [K, B, ...]) split over
    data x fsdp; the other dimensions of an `ndim`-dimensional array replicated."""
    spec = [None] * max(ndim, axis + 1)
    spec[axis] = BATCH_AXES
    return NamedSharding(self.mesh, PartitionSpec(*spec))

  def logical_sharding(self, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    """The sharding of an array of `shape` whose dimensions have logical `names` (see
    `mesh_axes`)."""
    return NamedSharding(
      self.mesh, PartitionSpec(*mesh_axes(names, shape, dict(self.mesh.shape), self.rules))
    )

  def tree_shardings(self, boxed_tree: Any) -> Any:
    """Shardings for a tree whose leaves are logically annotated boxes (shapes or arrays) or
    plain leaves (replicated). The result has the structure of the *unboxed* tree."""

    def one(leaf):
      if _is_box(leaf):
        return self.logical_sharding(leaf.names, leaf.value.shape)
      return self.replicated

    return jax.tree_util.tree_map(one, boxed_tree, is_leaf=_is_box)

  def param_shardings(self, model: LanguageModel) -> Any:
    """Shardings of `model`'s (unboxed) parameter tree."""
    return self.tree_shardings(boxed_param_shapes(model))

  # Creation and placement.

  def init_params(self, model: LanguageModel, rng: jax.Array) -> Any:
    """`model`'s fresh parameters, created directly in their shards (never whole on one host)."""
    init = self.jit(
      _unboxed_init,
      in_shardings=(self.replicated,),
      out_shardings=self.param_shardings(model),
      static=(model,),
    )
    return init(rng)

  def abstract_params(self, model: LanguageModel, dtype: Any = None) -> Any:
    """`jax.ShapeDtypeStruct`s (with shardings) of `model`'s parameters: restore templates."""
    shapes = nn.unbox(boxed_param_shapes(model))
    return jax.tree_util.tree_map(
      lambda s, sharding: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sharding),
      shapes,
      self.param_shardings(model),
    )

  def shard_batch(self, tree: Any, axis: int = 0) -> Any:
    """Global host arrays [B, ...] (every process holds the same values; [K, B, ...] for a
    stack of K batches with `axis` 1) -> global jax arrays split along B. Each process only
    transfers the rows of its own devices. Leaves that are already jax arrays are left as they
    are.

    B must be a multiple of `data_parallel_size` (see `pad_rows`).
    """

    def one(x):
      if isinstance(x, jax.Array):  # a stack made on device is moved to the stack's sharding
        return x if axis == 0 else jax.device_put(x, self.batch_sharding(x.ndim, axis))
      x = np.asarray(x)
      if x.shape[axis] % self.data_parallel_size:
        raise ValueError(
          f"A batch of {x.shape[axis]} rows does not split over the "
          f"{self.data_parallel_size} data-parallel devices (mesh data x fsdp); "
          "use a batch size that is a multiple of it."
        )
      sharding = self.batch_sharding(x.ndim, axis)
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree)

  def to_host(self, x: jax.Array) -> np.ndarray:
    """The whole value of a global array as numpy, on every process (gathered if need be)."""
    if x.is_fully_addressable:
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  def cast(self, model: LanguageModel, params: Any, dtype: str) -> Any:
    """`model`'s `params` converted to `dtype` in their shards (e.g. frozen models in bfloat16)."""
    shardings = self.param_shardings(model)
    return self.jit(_cast, in_shardings=(shardings,), out_shardings=shardings, static=(dtype,))(
      params
    )

  def jit(
    self,
    fn: Callable,
    *,
    in_shardings: Any,
    out_shardings: Any,
    donate_argnums: int | Sequence[int] = (),
    static: tuple = (),
  ) -> Callable:
    """`fn(*arrays, *static)` compiled for the mesh: `call(*arrays)` runs it, `call.lower(*args)`
    lowers it for abstract arguments (`jax.ShapeDtypeStruct`s with shardings, as
    `th_distill.planning.plan` does). Traced and run inside `activate()`.

    `fn` should be a module-level function and `static` every other value it depends on
    (models, settings: hashable). `fn`, `static`, the mesh and the rules are static arguments of
    one `jax.jit`, so JAX's own cache shares a compiled program between every call of `jit` that
    meets the same function, values, mesh, rules and argument shapes, and never reuses it
    otherwise. A lambda or closure as `fn` is traced again by every `jit` call.
    """
    donated = (donate_argnums,) if isinstance(donate_argnums, int) else tuple(donate_argnums)
    compiled = jax.jit(
      _apply,
      static_argnums=(0, 1, 2),
      in_shardings=tuple(in_shardings),
      out_shardings=out_shardings,
      donate_argnums=tuple(3 + i for i in donated),
    )
    context = (self.mesh, self.rules)

    @functools.wraps(fn)
    def call(*args):
      with self.activate():
        return compiled(fn, static, context, *args)

    def lower(*args):
      with self.activate():
        return compiled.lower(fn, static, context, *args)

    call.lower = lower
    return call


def _apply(fn: Callable, static: tuple, context: tuple, *arrays: Any) -> Any:
  """`fn(*arrays, *static)`: what `Partitioner.jit` compiles (`context`, the mesh and the rules
  the trace ran under, only keys JAX's cache)."""
  del context
  return fn(*arrays, *static)


def _unboxed_init(rng: jax.Array, model: LanguageModel) -> Any:
  return nn.unbox(init_params(model, rng))


def _cast(params: Any, dtype: str) -> Any:
  return jax.tree_util.tree_map(lambda x: x.astype(dtype), params)


def pad_rows(arrays: dict[str, np.ndarray], multiple: int) -> tuple[dict[str, np.ndarray], int]:
  """Pads every array along axis 0 with zero rows to a multiple of `multiple`; returns the padded
  arrays and the original row count. Zero rows have an all-zero mask, so they carry no tokens."""
  rows = len(next(iter(arrays.values())))
  extra = -rows % multiple
  if not extra:
    return arrays, rows
  return {
    k: np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) for k, v in arrays.items()
  }, rows


@functools.cache
def boxed_param_shapes(model: LanguageModel) -> Any:
  """`model`'s parameters as logically annotated boxes of `jax.ShapeDtypeStruct`s (no compute)."""
  return jax.eval_shape(init_params, model, jax.random.PRNGKey(0))
