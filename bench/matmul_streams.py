"""The default study's training-shape matmuls, one stream and several at once, beside the plan's
matmul-rate probe: how close pure matmuls of the study's own shapes come to the rate its bound
assumes, with every core busy.

  python bench/matmul_streams.py [--config configs/tiny.py] [--streams 2] [--repeats 5]

The chain is `bench.phase_profile`'s same-shape chain of a distillation step of CONFIG (its
decoder and encoder rows projected from d_model to heads x d_kv, d_ff and vocabulary and back,
with the weight-gradient products), its length doubled until a call takes > 50 ms. Each turn
times the plan's probe (`progress.matmul_flops_per_second`, the rate its "time: at least" line
prices every FLOP at), one call of the chain, then `--streams` calls at once from a thread each
(XLA:CPU runs each on its own threads). Prints each turn and the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import phase_profile  # noqa: E402
from th_distill.observing import progress  # noqa: E402
from th_distill.planning import workload  # noqa: E402


def concurrent_seconds(call: Callable[[], object], streams: int) -> float:
  """Wall seconds of `streams` calls of `call` started at once, a thread each."""

  def one():
    jax.block_until_ready(call())

  threads = [threading.Thread(target=one) for _ in range(streams)]
  start = time.perf_counter()
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  return time.perf_counter() - start


def training_chain(config_path: str) -> tuple[Callable[[], object], float, str]:
  """(call, FLOPs of one call, name) of the same-shape chain of CONFIG's distillation step."""
  config = phase_profile.run_config(config_path)
  phases = {p.key: p for p in phase_profile.plan_phases(config)}
  regime = phases[workload.regime_key(config.regimes[0])]
  spec = phase_profile.chain_spec(config, regime, regime.work["steps"])
  chain, n = phase_profile.chain_program(spec), 4
  while True:
    jax.block_until_ready(chain(n))  # compiles at the first n
    start = time.perf_counter()
    jax.block_until_ready(chain(n))
    if time.perf_counter() - start > phase_profile.CHAIN_SECONDS:
      break
    n *= 2
  return (lambda: chain(n)), n * spec.link_flops, spec.name


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--streams", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  call, flops, name = training_chain(args.config)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {os.getloadavg()[0]}")
  print(f"chain: {name}, {flops / 1e9:.2f} GFLOP a call")
  rates: dict[str, list[float]] = {"probe": [], "one": [], "together": []}
  for turn in range(args.repeats):
    rates["probe"].append(progress.matmul_flops_per_second() / 1e9)
    start = time.perf_counter()
    jax.block_until_ready(call())
    rates["one"].append(flops / (time.perf_counter() - start) / 1e9)
    rates["together"].append(args.streams * flops / concurrent_seconds(call, args.streams) / 1e9)
    print(
      f"turn {turn}: plan's probe {rates['probe'][-1]:.1f} GFLOP/s; chain, one stream "
      f"{rates['one'][-1]:.1f}; {args.streams} streams at once {rates['together'][-1]:.1f} in all"
    )
  probe, one, together = (statistics.median(rates[k]) for k in ("probe", "one", "together"))
  print(
    f"medians: probe {probe:.1f} GFLOP/s; one stream {one:.1f} ({one / probe:.2f} of the probe); "
    f"{args.streams} at once {together:.1f} ({together / probe:.2f} of the probe)"
  )


if __name__ == "__main__":
  main()
