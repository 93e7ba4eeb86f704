"""Where the time of the sampler or of the distillation step goes, and how far it is from the
machine's limits: a `jax.profiler` trace summed by kind of operation, plus a roofline.

  python bench/op_profile.py sampler [--size small] [--batch 8] [--input-length 128] [--length 64]
  python bench/op_profile.py step [--student small] [--teacher base] [--batch 8]
                               [--input-length 128] [--target-length 64]

The trace (perfetto JSON) gives one event per executed XLA operation (a fusion, a copy, a loop);
its self time (minus the operations nested in it) is attributed to a kind by the `op_name`
metadata of the HLO instructions it runs (module paths such as `.../mlp/dot_general`), read from
the compiled program. Kinds: the matmuls of the MLPs, of the attention projections, of attention
itself (scores and mixing) and of the output layer; element-wise work over the vocabulary
(log-softmax, divergences, sampling); random numbers; the rest.

Roofline, in the same process and turns as the timed calls:
- sampler: the bytes one decoding step must read (decoder and output-layer weights, the
  cross-attention keys and values, the self-attention cache as grown by segments) over the
  streaming read bandwidth of a jitted sum over a 512 MiB array: the fastest a step can be at
  this precision, whatever the implementation;
- step: achieved FLOP/s (th_distill/flops.py) over a jitted 2048 x 2048 float32 matmul's.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import NEVER_STOP, bandwidth_probe, decode_step_bytes, interleaved_medians  # noqa: E402
from th_distill.config.settings import make_optimizer  # noqa: E402
from th_distill.models import T5, init_params, t5_config  # noqa: E402
from th_distill.planning.flops import distill_flops  # noqa: E402
from th_distill.sampling import sample  # noqa: E402
from th_distill.training.steps import Batch, create_train_state, make_distill_step  # noqa: E402

# (kind, pattern on the op_names of an operation's instructions); the first match wins. Matmul
# kinds look only at the op_names of `dot` instructions; a batched dot (attention's) may carry no
# op_name.
MATMUL_KINDS = [
  ("matmul: attention scores and mixing", r"bhk,bhsk|bhs,bhsk|bqhk,bshk|bhqs,bshk"),
  ("matmul: attention projections", r"_proj|bqhk,hke|bhk,hke"),
  ("matmul: MLP", r"/mlp/"),
  ("matmul: output layer", r"e,ev|_logits|logits_from_hidden"),
]
OTHER_KINDS = [
  (
    "sampling: random numbers, Gumbel noise, draw",
    r"threefry|random_bits|_uniform|_gumbel|fold_in|random_split|categorical|vmap\(\)/reduce",
  ),
  ("log-softmax and divergences over the vocabulary", r"log_softmax|divergences"),
  ("optimizer", r"adam|optax|scale_by|clip"),
  ("attention softmax, position bias, masks", r"attention|attend|relpos|relative_position"),
  ("element-wise MLP (GELU)", r"/mlp/"),
  ("transposes and copies", r"transpose|copy"),
]
WALL_KINDS = ("ThunkExecutor", "$", "SlinkyThreadPool", "Thread")


def _instructions(hlo: str) -> tuple[dict[str, str], dict[str, list[str]]]:
  """Maps instruction name -> its line, and computation name -> the lines of its body."""
  lines, bodies, current = {}, {}, None
  for line in hlo.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header and not line.startswith(" "):
      current = header.group(1)
      bodies[current] = []
      continue
    found = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if found:
      lines[found.group(1)] = line
      if current is not None:
        bodies[current].append(line)
  return lines, bodies


def _kind(line: str, bodies: dict[str, list[str]]) -> str:
  """The kind of one executed instruction, from the instructions it runs (a fusion's body)."""
  called = re.search(r"calls=%([\w.\-]+)", line)
  body = bodies.get(called.group(1), []) if called else []
  body = body + [line]
  dots = [b for b in body if re.search(r"\bdot\(", b)]
  names = lambda ls: " ".join(re.findall(r'op_name="([^"]*)"', " ".join(ls)))  # noqa: E731
  if dots:
    for kind, pattern in MATMUL_KINDS:
      if re.search(pattern, names(dots)):
        return kind
    if any("lhs_batch_dims" in d for d in dots):
      return MATMUL_KINDS[0][0]
    return "matmul: other"
  for kind, pattern in OTHER_KINDS:
    if re.search(pattern, names(body)):
      return kind
  if re.match(r"^\s*(?:ROOT )?%(copy|transpose)", line):
    return "transposes and copies"
  return "other"


def _self_times(events: list[dict[str, Any]]) -> dict[str, float]:
  """Self time (microseconds) of every event name: its duration minus its nested events'."""
  totals: dict[str, float] = collections.Counter()
  by_thread = collections.defaultdict(list)
  for e in events:
    by_thread[(e.get("pid"), e.get("tid"))].append(e)
  for thread in by_thread.values():
    thread.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack: list[dict[str, Any]] = []
    for e in thread:
      while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"]:
        stack.pop()
      if stack:
        totals[stack[-1]["name"]] -= e["dur"]
      totals[e["name"]] += e["dur"]
      stack.append(e)
  return totals


def profile(compiled: Any, call: Callable[[], Any], top: int = 0) -> dict[str, float]:
  """Seconds of operation time per kind over one traced call of `call` (the `compiled` program);
  prints the `top` operations by time with their kind and op_name."""
  lines, bodies = _instructions(compiled.as_text())
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      jax.block_until_ready(call())
    path = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path, "rt") as f:
      events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
  times = {
    name: micros / 1e6
    for name, micros in _self_times(events).items()
    if not name.startswith(WALL_KINDS) and name in lines
  }
  kinds: dict[str, float] = collections.Counter()
  for name, seconds in times.items():
    kinds[_kind(lines[name], bodies)] += seconds
  for name, seconds in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
    op_name = re.search('op_name="([^"]*)"', lines[name])
    print(
      f"  {1e3 * seconds:9.2f} ms  {name:<28} {_kind(lines[name], bodies):<44} "
      f"{op_name.group(1) if op_name else ''}"
    )
  return dict(kinds)


def _print_kinds(kinds: dict[str, float], per: int, unit: str) -> None:
  total = sum(kinds.values())
  print(
    f"operation time by kind ({1e3 * total / per:.2f} ms of operations per {unit}; "
    "ops on the two threads overlap):"
  )
  for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
    print(f"  {100 * seconds / total:5.1f}%  {1e3 * seconds / per:8.3f} ms/{unit}  {kind}")


def sampler(args: argparse.Namespace) -> None:
  cfg = t5_config(args.size)
  model = T5(cfg)
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  prompts = jnp.asarray(
    np.random.default_rng(1).integers(2, cfg.vocab_size, (args.batch, args.input_length)), jnp.int32
  )
  mask, key = jnp.ones(prompts.shape, bool), jax.random.PRNGKey(2)
  settings = dict(max_length=args.length, tokens=NEVER_STOP)
  compiled = sample.lower(model, params, prompts, mask, key, **settings).compile()
  call = lambda: compiled(params, prompts, mask, key)  # noqa: E731
  probe, probe_bytes = bandwidth_probe()
  seconds = interleaved_medians({"sampler": call, "bandwidth": probe}, args.repeats, warmup=1)
  read_rate = probe_bytes / seconds["bandwidth"]
  step_bytes = decode_step_bytes(cfg, params, args.batch, args.input_length, args.length)
  per_step = seconds["sampler"] / args.length
  bound = step_bytes / read_rate
  print(
    f"sampler {args.size} b{args.batch} in{args.input_length} L{args.length}: "
    f"{1e3 * per_step:.2f} ms/step (encoder included), "
    f"{args.batch * args.length / seconds['sampler']:,.0f} new tok/s"
  )
  print(
    f"roofline: {step_bytes / 2**20:.1f} MiB read per step at {read_rate / 1e9:.1f} GB/s "
    f"(jitted sum, same turns) = {1e3 * bound:.2f} ms/step at best, "
    f"{args.batch / bound:,.0f} new tok/s; this run reaches {100 * bound / per_step:.0f}% "
    "of it"
  )
  _print_kinds(profile(compiled, call, args.top), args.length, "step")


def step(args: argparse.Namespace) -> None:
  student, teacher = T5(t5_config(args.student)), T5(t5_config(args.teacher))
  s_params = nn.unbox(init_params(student, jax.random.PRNGKey(0)))
  t_params = nn.unbox(init_params(teacher, jax.random.PRNGKey(1)))
  vocab = student.cfg.vocab_size
  tokens = np.random.default_rng(2).integers(
    2, vocab, (args.batch, args.input_length + args.target_length)
  )
  batch = Batch(
    prompts=jnp.asarray(tokens[:, : args.input_length], jnp.int32),
    prompt_mask=jnp.ones((args.batch, args.input_length), bool),
    responses=jnp.asarray(tokens[:, args.input_length :], jnp.int32),
    mask=jnp.ones((args.batch, args.target_length), jnp.float32),
  )
  state = create_train_state(s_params, make_optimizer(1e-4))
  rng = jax.random.PRNGKey(4)
  # Not donated: the same state is fed to every call, so each times the same step.
  compiled = (
    jax.jit(make_distill_step(student, teacher, None, "jsd"))
    .lower(state, t_params, None, batch, rng)
    .compile()
  )
  call = lambda: compiled(state, t_params, None, batch, rng)  # noqa: E731
  matmul = jax.jit(jnp.matmul)
  a = jnp.ones((2048, 2048), jnp.float32)
  seconds = interleaved_medians(
    {"step": call, "ceiling": lambda: matmul(a, a)}, args.repeats, warmup=1
  )
  flops = args.batch * distill_flops(
    student.cfg, teacher.cfg, args.input_length, args.target_length
  )
  ceiling = 2 * 2048**3 / seconds["ceiling"]
  print(
    f"distillation step {args.student} <- {args.teacher}, batch {args.batch}, "
    f"in {args.input_length}, target {args.target_length}: {1e3 * seconds['step']:.0f} ms, "
    f"{flops / seconds['step'] / 1e9:.1f} GFLOP/s = "
    f"{100 * flops / seconds['step'] / ceiling:.0f}% of the 2048^2 matmul "
    f"({ceiling / 1e9:.1f} GFLOP/s, same turns)"
  )
  _print_kinds(profile(compiled, call, args.top), 1, "step")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("target", choices=["sampler", "step"])
  parser.add_argument("--size", default="small", help="sampler: model size")
  parser.add_argument("--student", default="small")
  parser.add_argument("--teacher", default="base")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input-length", type=int, default=128)
  parser.add_argument("--length", type=int, default=64, help="sampler: new tokens")
  parser.add_argument("--target-length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--top", type=int, default=0, help="list the N longest operations")
  args = parser.parse_args()
  print(
    f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.2f}"
  )
  {"sampler": sampler, "step": step}[args.target](args)


if __name__ == "__main__":
  main()
