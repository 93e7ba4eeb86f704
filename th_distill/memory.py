r"""Memory per device of a distillation step, computed from the shapes (no accelerator needed).

  python -m th_distill.memory                       # the paper's XSum setup, several meshes
  python -m th_distill.memory --config=configs/t5_small.py --mesh=1,8,1 --mesh=2,2,2

What is counted, per device (GiB): the student's float32 parameters, gradient and two Adam
moments; the frozen teacher and oracle in `frozen_dtype`; each parameter divided by the mesh axes
its sharding uses (`partitioning.mesh_axes`, the rules the run uses). Activations are estimates:
the student's activations kept for the backward pass (per token and layer: 4E + 4HK + 2H*Li + 3F
in the encoder, 6E + 8HK + 2H*(Li + Lt) + 3F in the decoder, with E d_model, H heads, K d_kv,
F d_ff), the [B, Lt, V] logits alive at once (student logits, their gradient and log-softmax, one
log-softmax per reference: 5 copies, divided by micro-batches and sequence chunks), and the KV
cache of the online sampler. The batch is split over data x fsdp; heads, d_ff and vocab over model.
XLA's temporaries and fragmentation come on top: keep a margin of 20-30 %.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import ml_collections
from absl import flags

from th_distill import cli, config as config_lib
from th_distill.models import T5, T5Config
from th_distill.partitioning import MESH_AXES, boxed_param_shapes, mesh_axes

GIB = 2.0**30
_BYTES = {"float32": 4, "bfloat16": 2}


def param_bytes(cfg: T5Config, mesh_shape: dict[str, int], dtype: str) -> float:
  """Bytes per device of the parameters of a `cfg` model stored in `dtype`."""
  total = 0.0
  for box in jax.tree_util.tree_leaves(boxed_param_shapes(T5(cfg)),
                                       is_leaf=lambda x: hasattr(x, "names")):
    shape = box.value.shape
    split = math.prod(math.prod(mesh_shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
                      for axes in mesh_axes(box.names, shape, mesh_shape) if axes is not None)
    total += math.prod(shape) * _BYTES[dtype] / split
  return total


def activation_bytes(cfg: T5Config, rows: float, prompt_length: int, response_length: int,
                     model_split: int) -> float:
  """Float32 activations the backward pass keeps for `rows` sequences of a `cfg` model."""
  e, hk, h, f = cfg.d_model, cfg.num_heads * cfg.d_kv / model_split, cfg.num_heads / model_split, \
      cfg.d_ff / model_split
  encoder = 4 * e + 4 * hk + 2 * h * prompt_length + 3 * f
  decoder = 6 * e + 8 * hk + 2 * h * (prompt_length + response_length) + 3 * f
  tokens_in, tokens_out = rows * prompt_length, rows * response_length
  return 4.0 * (cfg.num_encoder_layers * encoder * tokens_in +
                cfg.num_decoder_layers * decoder * tokens_out)


def estimate(config: ml_collections.ConfigDict, mesh: Sequence[int]) -> dict[str, float]:
  """GiB per device of each part of a stage-2 step of `config` on a (data, fsdp, model) `mesh`."""
  mesh_shape = dict(zip(MESH_AXES, mesh))
  student, teacher, oracle = (config_lib.to_t5_config(config[name].model)
                              for name in ("student", "teacher", "oracle"))
  li, lt, vocab = config.task.prompt_length, config.task.response_length, config.task.vocab_size
  rows = config.student.batch_size / (mesh_shape["data"] * mesh_shape["fsdp"])
  micro_rows = rows / config.student.micro_batches
  split = mesh_shape["model"]
  student_params = param_bytes(student, mesh_shape, "float32")
  sampler = max(teacher, student, key=lambda c: c.num_decoder_layers * c.num_heads * c.d_kv)
  parts = {
      "student params + grads + Adam": 4 * student_params,
      "teacher params": param_bytes(teacher, mesh_shape, config.frozen_dtype),
      "oracle params": param_bytes(oracle, mesh_shape, config.frozen_dtype),
      "student activations": activation_bytes(student, micro_rows, li, lt, split),
      "logits": 5 * 4.0 * micro_rows * lt / config.sequence_chunks * vocab / split,
      "sampler KV cache": 4.0 * 2 * sampler.num_decoder_layers * rows * (li + lt) *
                          sampler.num_heads * sampler.d_kv / split,
  }
  parts = {k: v / GIB for k, v in parts.items()}
  parts["total"] = sum(parts.values())
  return parts


def paper_xsum_config() -> ml_collections.ConfigDict:
  """The paper's headline setup: T5-XL oracle, T5-large teacher, T5-base student, XSum lengths
  (1024-token articles, 128-token summaries), batch 32, T5's 32,128-token vocabulary; frozen
  models in float32 and logits in one chunk (the table's variants change these)."""
  return config_lib.paper_config("xsum", prompt_length=1024, response_length=128)


def table(config: ml_collections.ConfigDict, meshes: Sequence[Sequence[int]],
          variants: Sequence[dict] = ({},)) -> str:
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
      lines.append(f"| {tuple(mesh)} | {settings} | " +
                   " | ".join(f"{v:.2f}" for v in parts.values()) + " |")
  return "\n".join(lines)


PAPER_MESHES = ((1, 1, 1), (8, 1, 1), (1, 8, 1), (1, 4, 2), (4, 8, 1), (1, 16, 2))
PAPER_VARIANTS = ({}, {"frozen_dtype": "bfloat16", "sequence_chunks": 4},
                  {"frozen_dtype": "bfloat16", "sequence_chunks": 4, "micro_batches": 4})

_CONFIG = flags.DEFINE_string("config", None, "Config file (default: the paper's XSum setup).")
_MESH = flags.DEFINE_multi_string("mesh", None, "data,fsdp,model (repeatable).")


def parse_mesh(text: str, batch_size: int) -> tuple[int, int, int]:
  """`--mesh=data,fsdp,model` as three positive ints whose data x fsdp divides `batch_size`;
  ConfigError otherwise."""
  parts = text.split(",")
  if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
    raise config_lib.ConfigError(f"--mesh={text}: must be three positive integers "
                                 "data,fsdp,model (e.g. --mesh=1,8,1)")
  mesh = tuple(int(p) for p in parts)
  if batch_size % (mesh[0] * mesh[1]):
    raise config_lib.ConfigError(f"--mesh={text}: data x fsdp = {mesh[0] * mesh[1]} must divide "
                                 f"student.batch_size = {batch_size}")
  return mesh


def _print_table() -> None:
  config = (config_lib.load_config_file(_CONFIG.value) if _CONFIG.value
            else paper_xsum_config())
  meshes = ([parse_mesh(m, config.student.batch_size) for m in _MESH.value] if _MESH.value
            else PAPER_MESHES)
  print(table(config, meshes, PAPER_VARIANTS))


def main(argv: list[str]) -> None:
  cli.reject_arguments(argv)
  cli.run_command(_print_table)


if __name__ == "__main__":
  cli.main(main)
