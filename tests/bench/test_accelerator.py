"""bench/accelerator.py at tiny shapes on the CPU (the `--smoke` run takes about 100 s here): the
peak table, the correctness checks (the CPU against itself, so every check must pass), the step
and sampler rows."""

import dataclasses

import jax
import pytest

from bench import accelerator


@pytest.mark.parametrize(
  "kind, bf16",
  [
    ("NVIDIA H100 80GB HBM3", 989.5),
    ("NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H200", 989.5),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("TPU v4", 275.0),
    ("TPU v5 lite", 197.0),
    ("TPU v5p", 459.0),
  ],
)
def test_peaks_by_device_kind(kind, bf16):
  peak, f32, source = accelerator.peak_for(kind)
  assert peak == bf16 * 1e12 and 0 < f32 <= peak and source


def test_no_peak_for_an_unknown_device():
  assert accelerator.peak_for("cpu") is None


def test_correctness_checks_pass_on_the_cpu_against_itself():
  cpu = jax.devices("cpu")[0]
  rows = (
    accelerator.check_divergences(cpu, cpu, (2, 3, 50))
    + accelerator.check_step(cpu, cpu, "tiny", vocab=64)
    + accelerator.check_sampler(cpu, cpu, "tiny", vocab=64)
  )
  assert [r["ok"] for r in rows] == [True] * 7, rows
  assert rows[-1]["tokens_equal_to_cpu_sampler"] == 1.0
  assert rows[-1]["error"] < 1e-4  # the sampler's log-probs against teacher forcing


def test_step_and_sampler_rows_at_tiny_shapes():
  shapes = dataclasses.replace(
    accelerator.SMOKE, batch=2, input_length=4, target_length=4, new_tokens=4, repeats=1
  )
  peaks = dict.fromkeys(accelerator.DTYPES, 1e11)
  steps = accelerator.step_rows(shapes, peaks, peaks)
  assert [r["dtype"] for r in steps] == list(accelerator.DTYPES)
  assert all(r["target_tokens_per_s"] > 0 and r["mfu"] == r["of_measured_matmul"] for r in steps)
  sampler = accelerator.sampler_rows(shapes, read_rate=1e10)
  assert all(r["new_tokens_per_s"] > 0 and r["roofline_tokens_per_s"] > 0 for r in sampler)
  table = accelerator._table(
    "t", sampler, [("case", "case", ""), ("tok/s", "new_tokens_per_s", ",.0f")]
  )
  assert table.splitlines()[2].startswith("tiny b8 in4 L4")
