"""The embedded default study (configs/tiny.py) with decoder-only models: oracle, teacher and
student are the `tiny` decoder (`family = 'decoder'`: d_model 64, 4 layers, 4 query heads over 2
key/value heads, RoPE, SiLU-gated MLP, untied embeddings; about as many parameters as the tiny
T5). Each (prompt, response) pair is one causal sequence of 8 + 16 - 1 positions, the losses and
metrics read on the 16 response positions. Everything else (data, SFTs, regimes, detector) is the
default's; docs/results.md has its verdicts beside T5's.

Memory: plan for 2 GB per CPU device on mesh (data, fsdp, model) = (1, 1, 1), the regimes side
by side (tests/planning/test_config_memory.py checks every config's claim).
"""

from th_distill.config import base_config, decoder_model_config


def get_config():
  c = base_config()
  for name in ("oracle", "teacher", "student"):
    c[name].model = decoder_model_config("tiny", vocab_size=c.task.vocab_size)
  return c
