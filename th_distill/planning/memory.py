r"""Memory per device of a run's compiled programs, computed from the shapes (no accelerator).

  python -m th_distill.planning.memory                       # the paper's XSum setup, several meshes
  python -m th_distill.planning.memory --config=configs/t5_small.py --mesh=1,8,1 --mesh=2,2,2
  python -m th_distill.planning.memory --config=configs/t5_small.py --mesh=1,1,1 --device_gb=24

Prints two tables, every figure in GiB (2^30 bytes) per device: the distillation step's parts
for each mesh and memory setting, then each program's total (`program_estimates`: the names of
`th_distill.planning.plan`, which compiles the same programs and reports XLA's own figures).

What is counted, per device: parameters divided by the mesh axes their sharding uses
(`partitioning.mesh_axes`, the rules the run uses): the trained model in float32 with its
gradient and two Adam moments, the frozen teacher and oracle in `frozen_dtype` (stage 1 samples
with the float32 oracle); the weights in use, all-gathered over fsdp and held in the compute
dtype (float32; bfloat16 frozen weights are converted): two layers per model at a time (the one
in use and the next one being gathered: what TPU's memory-aware scheduler keeps), and, as an
upper bound, every layer at once (`all gathered`: what XLA's CPU scheduler does, which hoists
every all-gather to the start of the program); the activations the backward pass keeps (per token
and layer: 4E + 4HK + 2H*Li + 3F in the encoder, 6E + 8HK + 2H*(Li + Lt) + 3F in the decoder,
with E d_model, H heads, K d_kv, F d_ff); the [B, Lt, V] logits alive at once (5 copies in the
distillation step, 3 in SFT, 6 in the evaluator, divided by micro-batches and sequence chunks;
the evaluator's rows and chunks and the oracle sampler's rows are the calls `memory_layout`
chooses for the device's memory, `--device_gb`);
forward-only programs, and the frozen models' forward pass in the distillation step (with their
decoders' hidden states [B, Lt, E]), hold one encoder layer's working set at a time
(`ModelConfig.working_set_bytes`);
the samplers' KV cache
(self-attention over Lt and cross-attention over Li positions, float32) after the encoder's
working set is freed. The batch is split over data x fsdp; heads, d_ff and vocab over model.
docs/scaling.md compares these with XLA's memory analysis on a simulated mesh.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from th_distill import cli
from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.data.regimes import SAMPLE_CHUNK
from th_distill.partitioning import MESH_AXES
from th_distill.planning.weights import GATHERED_LAYERS, gathered_bytes, param_bytes
from th_distill.training.programs import REFERENCE_CACHE_BYTES, MemoryLayout

GIB = 2.0**30


def _finish(parts: dict[str, float], upper: float, phases: Sequence[str] = ()) -> dict[str, float]:
  """`parts` in GiB with their `total` (the `phases` parts are never alive together: the
  largest counts) and `total, all gathered` (`upper` bytes of gathered weights instead of the
  layers counted in 'gathered weights')."""
  parts = {k: v / GIB for k, v in parts.items()}
  phase = max((parts[k] for k in phases), default=0.0)
  parts["total"] = sum(v for k, v in parts.items() if k not in phases) + phase
  parts["total, all gathered"] = parts["total"] - parts["gathered weights"] + upper / GIB
  return parts


def program_estimates(
  config: RunConfig, mesh: Sequence[int], layout: MemoryLayout | None = None
) -> dict[str, dict[str, float]]:
  """{program: {part: GiB per device, 'total', 'total, all gathered'}} for the programs of
  `th_distill.planning.program_shapes.PROGRAMS` on a (data, fsdp, model) `mesh`, with the
  batches the run uses (samplers of the oracle data: `SAMPLE_CHUNK` rows, at most the layout's
  `sample_rows` per call; online sampler and distillation step: `student.batch_size`; SFT:
  `teacher.batch_size`; evaluator: the layout's `eval_rows` rows in `eval_chunks` chunks of
  positions). `layout`
  (`memory_layout`; default: the config's own, `MemoryLayout.of_config`) is how the run splits
  its samplers' and evaluator's host data."""
  layout = layout or MemoryLayout.of_config(config)
  p = _Programs(config, dict(zip(MESH_AXES, mesh)))
  sample_rows = min(SAMPLE_CHUNK, config.prompts.num_oracle, layout.sample_rows or SAMPLE_CHUNK)
  return {
    "oracle_sampling": p.sampler("oracle", "float32", sample_rows),
    "teacher_sft_step": p.sft_step(),
    "distill_step": p.distill_step(),
    "online_sampler": p.sampler("teacher", config.frozen_dtype, config.student.batch_size),
    "evaluator": p.evaluator(layout),
  }


_THREE = ("student", "teacher", "oracle")


class _Programs:
  """The estimates of each program of a run on one mesh (`program_estimates`)."""

  def __init__(self, config: RunConfig, mesh_shape: dict[str, int]):
    self.config, self.mesh_shape = config, mesh_shape
    self.cfg = {name: config.model(name) for name in _THREE}
    self.li, self.lt = config.task.prompt_length, config.task.response_length
    self.split, self.frozen = mesh_shape["model"], config.frozen_dtype
    self.data_parallel = mesh_shape["data"] * mesh_shape["fsdp"]

  def rows(self, n: int) -> float:
    return -(-n // self.data_parallel)

  def gathered(
    self, names: Sequence[str], dtype: str, layers: int | None = GATHERED_LAYERS
  ) -> float:
    return sum(
      gathered_bytes(self.cfg[n], self.mesh_shape, "float32" if n == "student" else dtype, layers)
      for n in names
    )

  def params(self, name: str, dtype: str) -> float:
    return param_bytes(self.cfg[name], self.mesh_shape, dtype)

  def sampler(self, name: str, dtype: str, n: int) -> dict[str, float]:
    model, r, li = self.cfg[name], self.rows(n), self.li
    parts = {
      f"{name} params": self.params(name, dtype),
      "gathered weights": self.gathered([name], dtype),
      "encoder working set": model.working_set_bytes(r, li, 0, self.split)
      + 4.0 * r * li * model.d_model,
      "KV cache": model.kv_cache_bytes(r, li, self.lt, self.split),
    }
    return _finish(parts, self.gathered([name], dtype, None), ("encoder working set", "KV cache"))

  def sft_step(self) -> dict[str, float]:
    rows, teacher = self.rows(self.config.teacher.batch_size), self.cfg["teacher"]
    parts = {
      "teacher params + grads + Adam": 4 * self.params("teacher", "float32"),
      "gathered weights": self.gathered(["teacher"], "float32"),
      "teacher activations": teacher.activation_bytes(rows, self.li, self.lt, self.split),
      "logits": 3 * 4.0 * rows * self.lt * self.config.task.vocab_size / self.split,
    }
    return _finish(parts, self.gathered(["teacher"], "float32", None))

  def distill_step(self) -> dict[str, float]:
    config, cfg, split, frozen = self.config, self.cfg, self.split, self.frozen
    rows = self.rows(config.student.batch_size) / config.student.micro_batches
    frozen_models = ("teacher", "oracle")
    parts = {
      "student params + grads + Adam": 4 * self.params("student", "float32"),
      "teacher params": self.params("teacher", frozen),
      "oracle params": self.params("oracle", frozen),
      "gathered weights": self.gathered(_THREE, frozen),
      "student activations": cfg["student"].activation_bytes(rows, self.li, self.lt, split),
      "frozen forward": max(
        cfg[n].working_set_bytes(rows, self.li, self.lt, split) for n in frozen_models
      )
      + sum(4.0 * rows * self.lt * cfg[n].d_model for n in frozen_models),
      "logits": LOGIT_COPIES["distill_step"]
      * logit_bytes(config, rows, config.sequence_chunks, split),
    }
    return _finish(parts, self.gathered(_THREE, frozen, None))

  def evaluator(self, layout: MemoryLayout) -> dict[str, float]:
    config, split, frozen = self.config, self.split, self.frozen
    rows = self.rows(min(layout.eval_rows, config.eval.batch_size, config.prompts.num_eval))
    models = self.cfg.values()
    parts = {
      "params": self.params("student", "float32")
      + self.params("teacher", frozen)
      + self.params("oracle", frozen),
      "gathered weights": self.gathered(_THREE, frozen),
      "working set": max(c.working_set_bytes(rows, self.li, self.lt, split) for c in models)
      + sum(4.0 * rows * self.lt * c.d_model for c in models),
      "logits": LOGIT_COPIES["evaluator"] * logit_bytes(config, rows, layout.eval_chunks, split),
    }
    return _finish(parts, self.gathered(_THREE, frozen, None))


# [rows, Lt / chunks, V] float32 logits alive at once in a program (see the module doc).
LOGIT_COPIES = {"distill_step": 5, "evaluator": 6}


def logit_bytes(config: RunConfig, rows: float, chunks: int, model_split: int) -> float:
  """Bytes per device of one [rows, Lt / chunks, V] float32 logits array split over model."""
  lt, vocab = config.task.response_length, config.task.vocab_size
  return 4.0 * rows * lt / chunks * vocab / model_split


# The share of a device's memory that `memory_layout` gives the estimate of a program it splits
# (a sampler or the evaluator on host data): XLA's temporaries come on top (for t5_small's
# evaluator on a CPU, XLA's memory analysis reads about 1.6x this module's estimate).
LAYOUT_SHARE = 0.5


def _halvings(rows: int, multiple: int) -> list[int]:
  """`rows` rounded up to a multiple of `multiple`, then halved (rounded up to a multiple)
  down to `multiple`: the row counts `memory_layout` tries, largest first."""
  rows = -(-rows // multiple) * multiple
  found = [rows]
  while found[-1] > multiple:
    found.append(-(-found[-1] // 2 // multiple) * multiple or multiple)
  return found


def memory_layout(config: RunConfig, mesh: Sequence[int], device_gib: float | None) -> MemoryLayout:
  """How the run splits its samplers' and evaluator's host data on a (data, fsdp, model) `mesh`
  of devices with `device_gib` GiB each (None: unknown, the config's own layout): the largest
  calls whose `program_estimates` take at most `LAYOUT_SHARE` of a device. The evaluator gives
  up rows first (down to one per data-parallel device), then splits positions into chunks (a
  multiple of `sequence_chunks` dividing Lt); the reference logits of a fixed evaluation set stay
  on the devices when they fit beside the largest program."""
  own = MemoryLayout.of_config(config)
  if device_gib is None:
    return own
  budget, data_parallel = LAYOUT_SHARE * device_gib, mesh[0] * mesh[1]
  lt = config.task.response_length

  def fits(layout: MemoryLayout, program: str) -> bool:
    return program_estimates(config, mesh, layout)[program]["total"] <= budget

  sample_rows = SAMPLE_CHUNK
  for sample_rows in _halvings(min(SAMPLE_CHUNK, config.prompts.num_oracle), data_parallel):
    if fits(dataclasses.replace(own, sample_rows=sample_rows), "oracle_sampling"):
      break
  eval_rows = min(config.eval.batch_size, config.prompts.num_eval)
  chunks = [c for c in range(own.eval_chunks, lt + 1, own.eval_chunks) if lt % c == 0]
  tries = [(own.eval_rows, own.eval_chunks)]
  tries += [(r, own.eval_chunks) for r in _halvings(eval_rows, data_parallel)[1:]]
  tries += [(data_parallel, c) for c in chunks[1:]]
  for eval_rows, eval_chunks in tries:
    layout = MemoryLayout(sample_rows, eval_rows, eval_chunks)
    if fits(layout, "evaluator"):
      break
  if layout.sample_rows >= min(SAMPLE_CHUNK, config.prompts.num_oracle):
    layout = dataclasses.replace(layout, sample_rows=None)  # never split: as the config runs
  largest = max(p["total"] for p in program_estimates(config, mesh, layout).values())
  spare = max(0.0, device_gib - largest) * GIB
  return dataclasses.replace(layout, reference_bytes=int(min(spare, REFERENCE_CACHE_BYTES)))


def layout_text(config: RunConfig, layout: MemoryLayout) -> str:
  """One line on how `layout` splits the samplers' and the evaluator's work."""
  sampler = (
    f"samplers {layout.sample_rows} rows a call"
    if layout.sample_rows
    else "samplers as the config says"
  )
  positions = f" in {layout.eval_chunks} chunks of positions" if layout.eval_chunks > 1 else ""
  return (
    f"split to fit a device: {sampler}, evaluator {layout.eval_rows} rows a call{positions} "
    f"(eval.batch_size = {config.eval.batch_size}); a fixed evaluation set keeps its "
    f"reference logits on the devices up to {layout.reference_bytes / 2**20:.0f} MiB per device"
  )


# The distillation step's parts that regimes side by side share: the frozen models' parameters.
SHARED_BY_REGIMES = ("teacher params", "oracle params")


def side_by_side(step: dict[str, float], regimes: int) -> dict[str, float]:
  """GiB per device of `regimes` distillation steps alive at once (stage 2's regimes side by
  side, `mesh.regimes_at_once`), from one step's parts (`program_estimates`' 'distill_step'):
  the frozen teacher and oracle once, every other part (the student's state, gathered weights,
  activations, logits) once per regime; the totals likewise."""
  result = {k: v if k in SHARED_BY_REGIMES else regimes * v for k, v in step.items()}
  shared = sum(step[k] for k in SHARED_BY_REGIMES)
  for total in ("total", "total, all gathered"):
    result[total] = regimes * step[total] - (regimes - 1) * shared
  return result


def estimate(config: ml_collections.ConfigDict, mesh: Sequence[int]) -> dict[str, float]:
  """GiB per device of each part of a stage-2 distillation step of `config` on a
  (data, fsdp, model) `mesh` (`program_estimates`' 'distill_step')."""
  return program_estimates(RunConfig.from_config(config), mesh)["distill_step"]


def paper_xsum_config() -> ml_collections.ConfigDict:
  """The paper's headline setup: T5-XL oracle, T5-large teacher, T5-base student, XSum lengths
  (1024-token articles, 128-token summaries), batch 32, T5's 32,128-token vocabulary; frozen
  models in float32 and logits in one chunk (the table's variants change these)."""
  return config_lib.paper_config("xsum", prompt_length=1024, response_length=128)


def table(
  config: ml_collections.ConfigDict,
  meshes: Sequence[Sequence[int]],
  variants: Sequence[dict] = ({},),
) -> str:
  """A markdown table of `estimate` for every mesh and config variant (overrides of
  `frozen_dtype`, `sequence_chunks`, `student.micro_batches`)."""
  header = None
  lines = []
  for mesh in meshes:
    for variant in variants:
      c = config.copy_and_resolve_references()
      for key, value in variant.items():
        if key == "micro_batches":
          c.student.micro_batches = value
        else:
          c[key] = value
      parts = estimate(c, mesh)
      if header is None:
        header = ["mesh (data, fsdp, model)", "settings", *parts]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
      settings = ", ".join(f"{k}={v}" for k, v in variant.items()) or "defaults"
      lines.append(
        f"| {tuple(mesh)} | {settings} | " + " | ".join(f"{v:.2f}" for v in parts.values()) + " |"
      )
  return "\n".join(lines)


def program_table(
  config: ml_collections.ConfigDict,
  meshes: Sequence[Sequence[int]],
  device_gib: float | None = None,
) -> str:
  """A markdown table of every program's `total` (and `total, all gathered`), GiB per device,
  the samplers and the evaluator split to fit devices of `device_gib` (`memory_layout`)."""
  lines = []
  typed = RunConfig.from_config(config)
  for mesh in meshes:
    programs = program_estimates(typed, mesh, memory_layout(typed, mesh, device_gib))
    if not lines:
      lines += [
        "| mesh (data, fsdp, model) | " + " | ".join(programs) + " |",
        "|" + "---|" * (len(programs) + 1),
      ]
    lines.append(
      f"| {tuple(mesh)} | "
      + " | ".join(f"{p['total']:.2f} ({p['total, all gathered']:.2f})" for p in programs.values())
      + " |"
    )
  return "\n".join(lines)


PAPER_MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 4, 2), (4, 8, 1), (1, 16, 2))
PAPER_VARIANTS = (
  {},
  {"frozen_dtype": "bfloat16", "sequence_chunks": 4},
  {"frozen_dtype": "bfloat16", "sequence_chunks": 4, "micro_batches": 4},
)


def parse_mesh(text: str, batch_size: int) -> tuple[int, int, int]:
  """`--mesh=data,fsdp,model` as three positive ints whose data x fsdp divides `batch_size`;
  ConfigError otherwise."""
  parts = text.split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise config_lib.ConfigError(
      f"--mesh={text}: must be three positive integers data,fsdp,model (e.g. --mesh=1,8,1)"
    )
  mesh = tuple(int(p) for p in parts)
  if batch_size % (mesh[0] * mesh[1]):
    raise config_lib.ConfigError(
      f"--mesh={text}: data x fsdp = {mesh[0] * mesh[1]} must divide "
      f"student.batch_size = {batch_size}"
    )
  return mesh


def print_tables(
  config: ml_collections.ConfigDict | None, meshes: Sequence[str], device_gb: float | None = None
) -> None:
  """Prints `table` and `program_table` for `config` (None: the paper's XSum setup; models of
  family 'checkpoint' read from their checkpoints' config.json) on the `--mesh` texts `meshes`
  (none: `PAPER_MESHES`), on devices of `device_gb` GB (1e9 bytes; None: the samplers and the
  evaluator as the config says)."""
  device_gib = None if device_gb is None else device_gb * 1e9 / GIB
  config = config_lib.resolve_checkpoint_models(config) if config else paper_xsum_config()
  shapes = [parse_mesh(m, config.student.batch_size) for m in meshes] if meshes else PAPER_MESHES
  print("Distillation step, GiB per device:\n" + table(config, shapes, PAPER_VARIANTS))
  where = f" on {device_gb:g} GB devices" if device_gb else ""
  print(
    f"\nEvery program{where}, GiB per device: total (total with all weights gathered at once):\n"
    + program_table(config, shapes, device_gib)
  )


def main() -> None:
  """The command line (flags are defined here, not at import: other modules define --config too)."""
  config = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file (default: the paper's XSum setup); --config.KEY=VALUE overrides as for "
    "th_distill.main.",
  )
  meshes = flags.DEFINE_multi_string("mesh", None, "data,fsdp,model (repeatable).")
  device_gb = flags.DEFINE_float(
    "device_gb", None, "Memory of one device in GB: the samplers and the evaluator split to fit."
  )

  def body(argv: list[str]) -> None:
    cli.reject_arguments(argv)
    cli.run_command(lambda: print_tables(config.value, meshes.value or (), device_gb.value))

  cli.main(body)


if __name__ == "__main__":
  main()
