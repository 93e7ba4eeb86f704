"""The paper's headline setup with a decoder-only pair: XSum, a Qwen2.5-3B-shaped oracle, a
Qwen2.5-1.5B teacher and a Qwen2.5-0.5B student (one family, `family = 'decoder'`), forward KL.

Everything but the models and the vocabulary is configs/xsum_large_to_base.py's, read from that
file: 1,024-token articles, 128-token summaries, N = 50,000 x k = 4 offline examples, batch 32,
learning rate 3e-4 after 100 warm-up steps, 390,625 steps, frozen models in bfloat16, logits in
4 chunks. Each pair is one causal
sequence of 1,024 + 128 - 1 positions; the vocabulary is Qwen2.5's 151,936 rows.

Weights: `--config.teacher.checkpoint=DIR/Qwen2.5-1.5B`, `--config.student.checkpoint=DIR/
Qwen2.5-0.5B`, `--config.oracle.checkpoint=DIR/Qwen2.5-3B` (local Hugging Face directories, read
by th_distill.models.hf_decoder). The task's tokenizer must be Qwen's byte-level BPE, which
th_distill.data.vocabularies does not read yet (SentencePiece only): today this config is for
planning (`python -m th_distill.planning.plan --config=configs/xsum_qwen_1p5b_to_0p5b.py
--mesh=1,8,2`, `python -m th_distill.planning.memory ...`); docs/scaling.md has its memory per
device.

Memory: plan for 32 GB per accelerator on mesh (data, fsdp, model) = (1, 8, 2) (the teacher's SFT
step takes about 23.6 GiB per device there).
"""

import os

from th_distill.config import decoder_model_config, load_config_file

VOCAB = 151_936  # Qwen2.5's embedding rows


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(__file__), "xsum_large_to_base.py"))
  config.task.vocab_size = VOCAB
  for name, size in (("oracle", "3b"), ("teacher", "1.5b"), ("student", "0.5b")):
    config[name].model = decoder_model_config(size, vocab_size=VOCAB)
  return config
