"""bench/matmul_streams.py: calls started at once really overlap, and the chain is the study's."""

import time

from bench import matmul_streams, phase_profile


def test_calls_started_at_once_overlap():
  seconds = matmul_streams.concurrent_seconds(lambda: time.sleep(0.3), 3)
  assert 0.3 <= seconds < 0.6  # one after another would take 0.9 s


def test_the_chain_is_the_default_distillation_steps_shapes():
  call, flops, name = matmul_streams.training_chain(f"{phase_profile.REPO}/configs/tiny.py")
  assert name == "train 256+512 rows, 64->64/128/64"
  link = phase_profile.ChainSpec("train", (256, 512), 64, (64, 128, 64), True).link_flops
  assert flops % link == 0 and flops / link >= 4
  call()
