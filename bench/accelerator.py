"""On a GPU or TPU: correctness against the CPU, then the distillation step's, the sampler's and
the default study's speed there. One short script, for the rare runs on a lent accelerator.

  python bench/accelerator.py [--json out.json] [--peak-tflops T] [--peak-tflops-f32 T]
  python bench/accelerator.py --smoke     # small shapes, on whatever device there is (a CPU)

In order (the study first, while this process holds no device memory, so that the study's own
process can take the whole device):
1. study: `python -m th_distill.main --config=configs/tiny.py --workdir=<temp dir>` in a
   subprocess, its wall time and per-phase seconds (`bench.phase_profile`'s log parser), cut
   off after `--study-timeout` seconds (smoke: a shortened study, fewer steps and prompts).
2. correctness, accelerator against `jax.devices('cpu')`, every matmul at precision 'highest'
   (true float32: by default XLA computes float32 dots in TF32 on recent NVIDIA GPUs and in one
   bfloat16 pass on TPUs; the deviations at the default precision are printed beside, not
   checked), on random inputs built on the host, at tiny T5 shapes with T5's 32,128-entry
   vocabulary:
   - `divergences.fkl`, `rkl`, `jsd` (beta 0.5) of random logits [4, 16, V]: relative 1e-4 of
     each value plus 1e-6;
   - one `training.steps.make_distill_step` step (forward KL): loss and gradient norm within a
     relative 1e-4; the updated parameters within 1e-3 of each leaf's largest update. The
     optimiser is plain SGD at learning rate 1, so the update is the gradient itself and every
     gradient entry is checked (Adam's first update is lr x sign(g), which flips on gradients
     near zero between any two devices);
   - the sampler (`sampling.sample`, full-length responses): the log-probs it reports on the
     accelerator against those of the same tokens teacher forced on the CPU
     (`training.teacher_forcing.forward`, `sampling.sampling_log_probs`), within 1e-3 (as bench/peers.py
     checks against PyTorch); the share of tokens equal to the CPU sampler's for the same keys
     is printed (a near-tie can flip one draw and the rest of its row).
3. the distillation step (`make_distill_step`, forward KL, AdamW, the state donated) of T5
   small <- base and base <- base (smoke: tiny <- tiny), batch 32, input 128, target 64, in
   float32 and bfloat16 (the models' `dtype` = compute dtype of the matmuls; the student's
   parameters stay float32, the frozen teacher's are cast to bfloat16 as `frozen_dtype` does):
   target tokens/s and MFU = `planning.flops.distill_flops` x batch / seconds / peak. The peak:
   `--peak-tflops` (bfloat16) and `--peak-tflops-f32`, else `PEAKS` by
   `jax.devices()[0].device_kind`, else a measured jitted matmul of that dtype (8192^2; smoke
   2048^2), which is always measured and printed too.
4. the sampler (`sampling.sample`, T5 small and base, batch 8, input 128, 64 new tokens; smoke:
   tiny) in float32 and bfloat16: new tokens/s against the memory roofline: the bytes a
   decoding step must read (`bench.common.decode_step_bytes`) over the streaming read rate of a
   jitted sum (`bench.common.bandwidth_probe`, 2 GiB; smoke 64 MiB), as bench/op_profile.py does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import phase_profile  # noqa: E402
from bench.common import (  # noqa: E402
  NEVER_STOP,
  bandwidth_probe,
  decode_step_bytes,
  interleaved_medians,
  matmul_peak_flops,
)
from th_distill import divergences  # noqa: E402
from th_distill.config.settings import make_optimizer  # noqa: E402
from th_distill.models import T5, init_params, t5_config  # noqa: E402
from th_distill.planning.flops import distill_flops  # noqa: E402
from th_distill.sampling import sample, sampling_log_probs  # noqa: E402
from th_distill.training.steps import Batch, create_train_state, make_distill_step  # noqa: E402
from th_distill.training.teacher_forcing import forward  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 32128  # T5's vocabulary, for the correctness checks
# Dense (no sparsity) peak TFLOP/s per chip by `device_kind` (first substring match, case
# folded): (bfloat16, float32 at JAX's default precision, where the figures come from). Float32
# dots run by default in TF32 on NVIDIA Hopper and Ampere GPUs and in one bfloat16 pass on TPUs
# (JAX's "Matmul precision" page), so those are the float32 peaks. NVIDIA's datasheets quote
# tensor-core figures with 2:4 sparsity; the dense figures are half of them.
PEAKS: list[tuple[str, float, float, str]] = [
  ("H200 NVL", 835.0, 417.5, "NVIDIA H200 NVL datasheet: BF16 1,671, TF32 835 TFLOPS sparse"),
  ("H200", 989.5, 494.5, "NVIDIA H200 SXM datasheet: BF16 1,979, TF32 989 TFLOPS sparse"),
  ("H100 PCIe", 756.5, 378.0, "NVIDIA H100 PCIe datasheet: BF16 1,513, TF32 756 TFLOPS sparse"),
  ("H100", 989.5, 494.5, "NVIDIA H100 SXM datasheet: BF16 1,979, TF32 989 TFLOPS sparse"),
  ("A100", 312.0, 156.0, "NVIDIA A100 datasheet: BF16 312, TF32 156 TFLOPS dense"),
  ("TPU v5 lite", 197.0, 197.0, "Google Cloud TPU v5e documentation: 197 bf16 TFLOPS per chip"),
  ("TPU v5p", 459.0, 459.0, "Google Cloud TPU v5p documentation: 459 bf16 TFLOPS per chip"),
  ("TPU v5", 459.0, 459.0, "Google Cloud TPU v5p documentation: 459 bf16 TFLOPS per chip"),
  ("TPU v4", 275.0, 275.0, "Google Cloud TPU v4 documentation: 275 bf16 TFLOPS per chip"),
]
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Shapes:
  """What one run measures: model pairs (student, teacher), the step's batch and lengths, the
  sampler's sizes, batch and lengths, the matmul and bandwidth probe sizes, repeats."""

  pairs: tuple[tuple[str, str], ...]
  batch: int
  input_length: int
  target_length: int
  sampler_sizes: tuple[str, ...]
  sampler_batch: int
  new_tokens: int
  matmul_size: int
  probe_mib: int
  repeats: int
  study_args: tuple[str, ...]


FULL = Shapes(
  (("small", "base"), ("base", "base")), 32, 128, 64, ("small", "base"), 8, 64, 8192, 2048, 10, ()
)
# The smoke study: the default config with its counts cut, to exercise every phase quickly.
SMOKE_STUDY = (
  "--config.student.steps=20",
  "--config.student.sft_steps=10",
  "--config.teacher.steps=20",
  "--config.prompts.num_oracle=256",
  "--config.prompts.num_distill=256",
  "--config.prompts.num_eval=64",
  "--config.offline.num_prompts=256",
  "--config.eval.num_train_prompts=32",
  "--config.eval_every=10",
  "--config.eval_log_points=0",
)
SMOKE = Shapes((("tiny", "tiny"),), 8, 16, 8, ("tiny",), 8, 16, 2048, 64, 3, SMOKE_STUDY)


def _log(text: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def peak_for(device_kind: str) -> tuple[float, float, str] | None:
  """(bfloat16, float32) dense peak FLOP/s per chip and their source for a `device_kind`, or None."""
  kind = device_kind.lower()
  for name, bf16, f32, source in PEAKS:
    if name.lower() in kind:
      return bf16 * 1e12, f32 * 1e12, source
  return None


def _relative_error(a: Any, b: Any, scale: float) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))) / scale)


def _scaled_error(x: np.ndarray, ref: np.ndarray) -> float:
  """max |x - ref| / (1e-6 + 1e-4 |ref|)."""
  return float(np.max(np.abs(x - ref) / (1e-6 + 1e-4 * np.abs(ref))))


def _check(name: str, error: float, tolerance: float, default_error: float | None) -> dict:
  """One correctness row (error and tolerance in the same units)."""
  row = dict(check=name, error=error, tolerance=tolerance, ok=bool(error <= tolerance))
  if default_error is not None:
    row["error_at_default_precision"] = default_error
  return row


def _precision(precision: str | None) -> contextlib.AbstractContextManager:
  """Matmuls at `precision` ('highest') inside, or at the default precision (None)."""
  return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


# The (device, precision) of each run of a check: accelerator at 'highest', accelerator at the
# default precision, CPU at 'highest' (the reference).
def _runs(accel: jax.Device, cpu: jax.Device) -> tuple[tuple[jax.Device, str | None], ...]:
  return ((accel, "highest"), (accel, None), (cpu, "highest"))


def _on_both(fn: Callable[..., Any], args: tuple, accel: jax.Device, cpu: jax.Device) -> tuple:
  """Host results of `fn(*args)` jitted for each of `_runs` (the arguments put on its device)."""
  results = []
  for device, precision in _runs(accel, cpu):
    with _precision(precision):
      results.append(jax.device_get(jax.jit(fn)(*jax.device_put(args, device))))
  return tuple(results)


def check_divergences(
  accel: jax.Device, cpu: jax.Device, shape: tuple[int, ...] = (4, 16, VOCAB)
) -> list[dict]:
  """fkl, rkl, jsd of random logits `shape` [..., V]: max |acc - cpu| / (1e-6 + 1e-4 |cpu|) <= 1."""
  rng = np.random.default_rng(0)
  p, q = (3.0 * rng.standard_normal(shape).astype(np.float32) for _ in range(2))
  rows = []
  for name in ("fkl", "rkl", "jsd"):
    fn = divergences.get(name)
    high, default, ref = _on_both(fn, (p, q), accel, cpu)
    rows.append(
      _check(
        f"divergence {name} [x (1e-6 + 1e-4 |cpu|)]",
        _scaled_error(high, ref),
        1.0,
        _scaled_error(default, ref),
      )
    )
  return rows


def _models(student: str, teacher: str, dtype: str, vocab: int | None = None) -> tuple:
  over = dict(dtype=dtype, **({"vocab_size": vocab} if vocab else {}))
  s, t = T5(t5_config(student, **over)), T5(t5_config(teacher, **over))
  s_params = nn.unbox(init_params(s, jax.random.PRNGKey(0)))
  t_params = nn.unbox(init_params(t, jax.random.PRNGKey(1)))
  if dtype != "float32":  # the frozen teacher held in the compute dtype, as frozen_dtype does
    t_params = jax.tree_util.tree_map(lambda x: x.astype(dtype), t_params)
  return s, t, s_params, t_params


def _batch(batch: int, input_length: int, target_length: int, vocab: int, seed: int = 2) -> Batch:
  tokens = np.random.default_rng(seed).integers(2, vocab, (batch, input_length + target_length))
  return Batch(
    prompts=jnp.asarray(tokens[:, :input_length], jnp.int32),
    prompt_mask=jnp.ones((batch, input_length), bool),
    responses=jnp.asarray(tokens[:, input_length:], jnp.int32),
    mask=jnp.ones((batch, target_length), jnp.float32),
  )


def check_step(
  accel: jax.Device, cpu: jax.Device, size: str = "tiny", vocab: int = VOCAB
) -> list[dict]:
  """One distillation step on both devices (SGD at learning rate 1: the update is the
  gradient): loss and grad norm relative 1e-4, updated parameters 1e-3 of each leaf's
  largest update."""
  student, teacher, s_params, t_params = _models(size, size, "float32", vocab)
  batch = jax.device_get(_batch(4, 16, 16, vocab))
  step = make_distill_step(student, teacher, None, "fkl")

  def one_step(params, t_params, batch):
    state, metrics = step(
      create_train_state(params, optax.sgd(1.0)), t_params, None, batch, jax.random.PRNGKey(3)
    )
    return state.params, metrics["train/loss"], metrics["train/grad_norm"]

  args = jax.device_get((s_params, t_params, batch))
  high, default, ref = _on_both(one_step, args, accel, cpu)
  rows = []
  for i, name in ((1, "loss"), (2, "grad norm")):
    scale = abs(float(ref[i]))
    rows.append(
      _check(
        f"step {name} [relative]",
        _relative_error(high[i], ref[i], scale),
        1e-4,
        _relative_error(default[i], ref[i], scale),
      )
    )

  def worst(params):
    errors = []
    for new, cpu_new, old in zip(
      *(jax.tree_util.tree_leaves(t) for t in (params, ref[0], jax.device_get(s_params)))
    ):
      update = np.asarray(cpu_new, np.float64) - old
      errors.append(_relative_error(new, cpu_new, max(float(np.max(np.abs(update))), 1e-30)))
    return max(errors)

  rows.append(
    _check("step updated params [x leaf's largest update]", worst(high[0]), 1e-3, worst(default[0]))
  )
  return rows


def check_sampler(
  accel: jax.Device, cpu: jax.Device, size: str = "tiny", vocab: int = VOCAB
) -> list[dict]:
  """The accelerator sampler's log-probs against the same tokens teacher forced on the CPU."""
  model = T5(t5_config(size, vocab_size=vocab))
  params = jax.device_get(nn.unbox(init_params(model, jax.random.PRNGKey(0))))
  prompts = np.random.default_rng(1).integers(2, vocab, (8, 16)).astype(np.int32)
  mask = np.ones(prompts.shape, bool)
  key = np.asarray(jax.random.PRNGKey(2))

  def draw(device: jax.Device, precision: str | None) -> Any:
    with _precision(precision):
      placed = jax.device_put((params, prompts, mask, key), device)
      out = sample(model, *placed, max_length=16, tokens=NEVER_STOP)
    return jax.device_get(out)

  def teacher_forced(tokens: np.ndarray) -> np.ndarray:
    batch = Batch(prompts, mask, tokens, np.ones(tokens.shape, np.float32))
    batch = jax.device_put(batch, cpu)
    with jax.default_matmul_precision("highest"):
      logits = jax.jit(forward, static_argnums=0)(model, jax.device_put(params, cpu), batch)
      log_probs = sampling_log_probs(logits, 1.0)
    return np.take_along_axis(np.asarray(log_probs), tokens[..., None], -1)[..., 0]

  high, default, on_cpu = (draw(device, precision) for device, precision in _runs(accel, cpu))
  rows = [
    _check(
      "sampler log-probs vs CPU teacher forced [abs]",
      float(np.max(np.abs(high.logprobs - teacher_forced(np.asarray(high.tokens))))),
      1e-3,
      float(np.max(np.abs(default.logprobs - teacher_forced(np.asarray(default.tokens))))),
    )
  ]
  rows[0]["tokens_equal_to_cpu_sampler"] = float(np.mean(high.tokens == on_cpu.tokens))
  return rows


def step_rows(shapes: Shapes, peaks: dict[str, float], measured: dict[str, float]) -> list[dict]:
  """Target tokens/s and MFU of the distillation step for each pair and dtype."""
  rows = []
  for student_size, teacher_size in shapes.pairs:
    for dtype in DTYPES:
      _log(f"step {student_size} <- {teacher_size} {dtype}: compiling and timing")
      student, teacher, s_params, t_params = _models(student_size, teacher_size, dtype)
      batch = _batch(
        shapes.batch, shapes.input_length, shapes.target_length, student.cfg.vocab_size
      )
      step = jax.jit(make_distill_step(student, teacher, None, "fkl"), donate_argnums=0)
      holder = {"state": create_train_state(s_params, make_optimizer(1e-4))}
      rng = jax.random.PRNGKey(4)

      def run_step(step=step, holder=holder, t_params=t_params, batch=batch, rng=rng):
        holder["state"], metrics = step(holder["state"], t_params, None, batch, rng)
        return metrics

      start = time.perf_counter()
      jax.block_until_ready(run_step())
      compile_s = time.perf_counter() - start
      seconds = interleaved_medians({"step": run_step}, shapes.repeats, warmup=1)["step"]
      flops = shapes.batch * distill_flops(
        student.cfg, teacher.cfg, shapes.input_length, shapes.target_length
      )
      rate = flops / seconds
      rows.append(
        dict(
          case=f"{student_size} <- {teacher_size} b{shapes.batch} in{shapes.input_length} "
          f"t{shapes.target_length}",
          dtype=dtype,
          ms_per_step=1e3 * seconds,
          first_call_s=compile_s,
          target_tokens_per_s=shapes.batch * shapes.target_length / seconds,
          tflops=rate / 1e12,
          mfu=rate / peaks[dtype],
          of_measured_matmul=rate / measured[dtype],
        )
      )
  return rows


def sampler_rows(shapes: Shapes, read_rate: float) -> list[dict]:
  """New tokens/s of the sampler and its memory roofline, per size and dtype."""
  rows = []
  b, li, length = shapes.sampler_batch, shapes.input_length, shapes.new_tokens
  for size in shapes.sampler_sizes:
    for dtype in DTYPES:
      _log(f"sampler {size} {dtype}: compiling and timing")
      cfg = t5_config(size, dtype=dtype)
      model = T5(cfg)
      params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
      params = jax.tree_util.tree_map(lambda x, d=dtype: x.astype(d), params)
      prompts = jnp.asarray(
        np.random.default_rng(1).integers(2, cfg.vocab_size, (b, li)), jnp.int32
      )
      mask, key = jnp.ones(prompts.shape, bool), jax.random.PRNGKey(2)
      settings = dict(max_length=length, tokens=NEVER_STOP)
      compiled = sample.lower(model, params, prompts, mask, key, **settings).compile()
      seconds = interleaved_medians(
        {"sampler": functools.partial(compiled, params, prompts, mask, key)},
        shapes.repeats,
        warmup=1,
      )["sampler"]
      bound = decode_step_bytes(cfg, params, b, li, length) / read_rate
      rows.append(
        dict(
          case=f"{size} b{b} in{li} L{length}",
          dtype=dtype,
          ms_per_step=1e3 * seconds / length,
          new_tokens_per_s=b * length / seconds,
          roofline_tokens_per_s=b / bound,
          of_roofline=bound * length / seconds,
        )
      )
  return rows


def study_row(shapes: Shapes, timeout: float) -> dict:
  """The default study's wall time and phases on the default device (a subprocess)."""
  run = phase_profile.run_study(
    REPO, "configs/tiny.py", None, extra_args=shapes.study_args, timeout=timeout
  )
  lines = phase_profile.parse_log(run["log"], time.localtime(run["start"]).tm_year)
  intervals = phase_profile.phase_intervals(lines, phase_profile.logged_titles(lines))
  return dict(
    command=" ".join(["python -m th_distill.main --config=configs/tiny.py", *shapes.study_args]),
    wall_s=run["end"] - run["start"],
    finished=run["returncode"] == 0,
    returncode=run["returncode"],
    phases_s={t: round(s, 2) for t, s in phase_profile.exclusive_seconds(intervals).items()},
    log_tail="" if run["returncode"] == 0 else run["log"][-2000:],
  )


def _table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
  """A printed table: (header, key, format) per column; text left-aligned, numbers right."""
  cells = [
    ["-" if row.get(key) is None else format(row[key], fmt) for _, key, fmt in columns]
    for row in rows
  ]
  widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (h, _, _) in enumerate(columns)]
  left = [not fmt for _, _, fmt in columns]

  def line(texts: list[str]) -> str:
    return "  ".join(
      f"{t:<{w}}" if is_left else f"{t:>{w}}" for t, w, is_left in zip(texts, widths, left)
    )

  return "\n".join([title, line([h for h, _, _ in columns]), *(line(r) for r in cells)])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="small shapes (a CPU smoke test)")
  parser.add_argument("--peak-tflops", type=float, default=0.0, help="bfloat16 peak per chip")
  parser.add_argument("--peak-tflops-f32", type=float, default=0.0, help="float32 peak per chip")
  parser.add_argument("--study-timeout", type=float, default=200.0, help="seconds")
  parser.add_argument("--skip-study", action="store_true")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  shapes = SMOKE if args.smoke else FULL
  result: dict[str, Any] = {"args": vars(args), "load_average": [os.getloadavg()[0]]}
  start = time.time()

  if not args.skip_study:  # before this process allocates anything on the device
    _log("study: running (subprocess)")
    result["study"] = study_row(shapes, args.study_timeout)
    study = result["study"]
    _log(
      f"study: {study['wall_s']:.1f} s, {'finished' if study['finished'] else 'NOT finished'}; "
      + ", ".join(f"{t} {s:.1f} s" for t, s in study["phases_s"].items())
    )

  accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
  result["device"] = dict(
    platform=accel.platform, kind=accel.device_kind, count=jax.device_count(), jax=jax.__version__
  )
  _log(
    f"device: {jax.device_count()} x {accel.device_kind} ({accel.platform}), jax {jax.__version__}"
  )

  _log(
    "correctness against the CPU"
    + (" (the default device is the CPU: a trivial comparison)" if accel.platform == "cpu" else "")
  )
  checks = check_divergences(accel, cpu) + check_step(accel, cpu) + check_sampler(accel, cpu)
  result["correctness"] = checks

  _log("matmul rates and peaks")
  measured = {
    d: matmul_peak_flops(shapes.matmul_size, shapes.repeats, jnp.dtype(d)) for d in DTYPES
  }
  known = peak_for(accel.device_kind)
  peaks, sources = {}, {}
  for dtype, given in (("bfloat16", args.peak_tflops), ("float32", args.peak_tflops_f32)):
    if given:
      peaks[dtype], sources[dtype] = given * 1e12, "--peak-tflops" + ("-f32" * (dtype == "float32"))
    elif known:
      peaks[dtype] = known[0] if dtype == "bfloat16" else known[1]
      sources[dtype] = known[2]
    else:
      peaks[dtype] = measured[dtype]
      sources[dtype] = f"measured: jitted {shapes.matmul_size}^2 {dtype} matmul"
  result["peaks"] = {
    d: dict(tflops=peaks[d] / 1e12, source=sources[d], measured_matmul_tflops=measured[d] / 1e12)
    for d in DTYPES
  }

  result["steps"] = step_rows(shapes, peaks, measured)
  _log("bandwidth probe")
  probe, probe_bytes = bandwidth_probe(shapes.probe_mib)
  read_rate = probe_bytes / interleaved_medians({"probe": probe}, shapes.repeats, warmup=1)["probe"]
  result["read_gb_per_s"] = read_rate / 1e9
  del probe
  result["sampler"] = sampler_rows(shapes, read_rate)
  result["load_average"].append(os.getloadavg()[0])
  result["seconds"] = time.time() - start

  print()
  print(
    f"{'SMOKE RUN (small shapes; not a benchmark)' if args.smoke else 'accelerator benchmark'}: "
    f"{jax.device_count()} x {accel.device_kind} ({accel.platform}), jax {jax.__version__}, "
    f"load average {result['load_average'][0]:.2f} at start, {result['load_average'][1]:.2f} at "
    f"end, {result['seconds']:.0f} s in all"
  )
  print(
    _table(
      "correctness against the CPU (matmuls at precision 'highest'; default precision beside)",
      checks,
      [
        ("check", "check", ""),
        ("error", "error", ".2e"),
        ("tolerance", "tolerance", ".0e"),
        ("ok", "ok", ""),
        ("at default precision", "error_at_default_precision", ".2e"),
        ("tokens = CPU's", "tokens_equal_to_cpu_sampler", ".1%"),
      ],
    )
  )
  for dtype in DTYPES:
    p = result["peaks"][dtype]
    print(
      f"peak {dtype}: {p['tflops']:.3g} TFLOP/s ({p['source']}); measured "
      f"{shapes.matmul_size}^2 matmul {p['measured_matmul_tflops']:.3g} TFLOP/s"
    )
  print(
    _table(
      "distillation step (forward KL, AdamW, state donated)",
      result["steps"],
      [
        ("case", "case", ""),
        ("dtype", "dtype", ""),
        ("ms/step", "ms_per_step", ".1f"),
        ("first call s", "first_call_s", ".1f"),
        ("target tok/s", "target_tokens_per_s", ",.0f"),
        ("TFLOP/s", "tflops", ".2f"),
        ("MFU", "mfu", ".1%"),
        ("of matmul", "of_measured_matmul", ".1%"),
      ],
    )
  )
  print(
    _table(
      f"sampler (encoder included; roofline at {read_rate / 1e9:.1f} GB/s, a jitted sum)",
      result["sampler"],
      [
        ("case", "case", ""),
        ("dtype", "dtype", ""),
        ("ms/step", "ms_per_step", ".2f"),
        ("new tok/s", "new_tokens_per_s", ",.0f"),
        ("roofline tok/s", "roofline_tokens_per_s", ",.0f"),
        ("of roofline", "of_roofline", ".0%"),
      ],
    )
  )
  if "study" in result:
    study = result["study"]
    print(
      f"study ({study['command']}): {study['wall_s']:.1f} s wall, "
      f"{'finished' if study['finished'] else 'not finished (exit status ' + str(study['returncode']) + ')'}"
    )
  if not all(c["ok"] for c in checks):
    print("CORRECTNESS CHECK FAILED: " + ", ".join(c["check"] for c in checks if not c["ok"]))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(result, f, indent=2)
  if not all(c["ok"] for c in checks):
    sys.exit(1)


if __name__ == "__main__":
  main()
