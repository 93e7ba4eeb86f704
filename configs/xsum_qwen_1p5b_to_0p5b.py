"""The paper's headline setup with a decoder-only pair: XSum, a Qwen2.5-3B-shaped oracle, a
Qwen2.5-1.5B teacher and a Qwen2.5-0.5B student (one family, `family = 'decoder'`), forward KL.

Everything but the models and the prompts is configs/xsum_large_to_base.py's, read from that
file: 1,024-token prompts, 128-token summaries, N = 50,000 x k = 4 offline examples, batch 32,
learning rate 3e-4 after 100 warm-up steps, 390,625 steps, frozen models in bfloat16, logits in
4 chunks. Each pair is one causal sequence of 1,024 + 128 - 1 positions; the vocabulary is
Qwen2.5's 151,936 embedding rows.

Memory: plan for 32 GB per accelerator on mesh (data, fsdp, model) = (1, 8, 2) (the teacher's SFT
step takes about 23.6 GiB per device there; docs/your_model.md has other devices).

Files it needs (all local; nothing is downloaded):
  --config.oracle.checkpoint=DIR/Qwen2.5-3B     the three Hugging Face checkpoint directories
  --config.teacher.checkpoint=DIR/Qwen2.5-1.5B  (config.json + safetensors); each must match
  --config.student.checkpoint=DIR/Qwen2.5-0.5B  the shapes below (checked before any compute)
  --config.task.vocabulary=DIR/Qwen2.5-0.5B     the directory of Qwen's tokenizer.json: the
                                                pad and stop ids come from its files
  --config.task.prompt_file=xsum.jsonl          XSum's articles, one {"text": ...} per line,
                                                e.g. written from TFDS's xsum 1.1.0 (train and
                                                validation) by the snippet in docs/your_model.md
The prompts are `Summarize: <article>\\nSummary:` (the paper's `summarize: ` prefix, with a cue
for a decoder), an article cut at its end to fit 1,024 tokens; the oracle, distillation and
held-out pools are split by a hash of the text (th_distill.data.prompt_files).
"""

import os

from th_distill.config import decoder_model_config, load_config_file

VOCAB = 151_936  # Qwen2.5's embedding rows


def get_config():
  config = load_config_file(os.path.join(os.path.dirname(__file__), "xsum_large_to_base.py"))
  config.task.update(
    source="prompt_file",
    name="",
    vocab_size=VOCAB,
    prompt_field="text",
    prompt_template="Summarize: {text}\nSummary:",
  )
  for name, size in (("oracle", "3b"), ("teacher", "1.5b"), ("student", "0.5b")):
    config[name].model = decoder_model_config(size, vocab_size=VOCAB)
  return config
