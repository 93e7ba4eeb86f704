"""Real, small Hugging Face artefacts built in a test: a byte-level BPE tokenizer trained with
`tokenizers`, a tiny random Qwen2 saved by `transformers` (safetensors) with a
generation_config.json listing two stop ids, and JSONL prompt files. Nothing is downloaded.

The tokenizer is Qwen's kind: byte-level BPE whose ids 0 and 1 are the ordinary tokens `!` and `"`
(the byte alphabet comes first), special tokens `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`
added after the merges, a ChatML chat template, pad `<|endoftext|>` and EOS `<|im_end|>` (the
instruct models' convention); generation_config.json stops on `<|im_end|>` and `<|endoftext|>`.

API (shared with the end-to-end tests):
- `CORPUS`: the text the tokenizer is trained on (sentences with `!` and `"`);
- `train_tokenizer(vocab_size)` -> `tokenizers.Tokenizer`;
- `write_tokenizer(directory, pad_token=..., chat_template=CHATML)` -> the
  `transformers.PreTrainedTokenizerFast` saved there;
- `write_qwen2(directory, seed=0, **config)` -> `QwenArtifacts` (directory, the fast tokenizer,
  the torch model, `ids`: {'!', '"', '<|endoftext|>', '<|im_start|>', '<|im_end|>'} -> id);
- `write_prompt_file(path, texts, field='text', extra=None)` -> path: one JSON object a line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML = (
  "{% for message in messages %}"
  "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
  "{% endfor %}"
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
  'Stop! now then, "quoted" text said the council.',
  "The river rose by two metres overnight, and the town was flooded!",
  'She said "no" twice; then the vote was taken again.',
  "Summarize: the match ended in a draw after extra time.",
  "Translate to German: the weather is fine today.",
  'A "small" model can still learn the words of a small corpus!',
  "Numbers like 12, 345 and 6789 appear in news text too.",
  "Why? Because the question mark and the comma are tokens as well.",
] * 4


def train_tokenizer(vocab_size: int = 320):
  """A byte-level BPE (`tokenizers`) trained on `CORPUS`: ids 0 and 1 are `!` and `"`, the
  `SPECIALS` come last."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(CORPUS, trainer)
  tokenizer.add_special_tokens(list(SPECIALS))
  return tokenizer


def write_tokenizer(
  directory: str | os.PathLike,
  pad_token: str | None = "<|endoftext|>",
  chat_template: str | None = CHATML,
  **special: str,
):
  """The fast tokenizer of `train_tokenizer()` (EOS `<|im_end|>`, `pad_token`, `chat_template`,
  other named tokens in `special`) saved in `directory` by `save_pretrained`; returned."""
  import transformers

  tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=train_tokenizer(),
    eos_token="<|im_end|>",
    **({"pad_token": pad_token} if pad_token else {}),
    **special,
  )
  if chat_template is not None:
    tokenizer.chat_template = chat_template
  tokenizer.save_pretrained(os.fspath(directory))
  return tokenizer


@dataclasses.dataclass
class QwenArtifacts:
  directory: str
  tokenizer: Any  # transformers.PreTrainedTokenizerFast
  model: Any  # transformers.Qwen2ForCausalLM (eval mode)
  ids: dict[str, int]


def write_qwen2(directory: str | os.PathLike, seed: int = 0, **config: Any) -> QwenArtifacts:
  """A tiny random Qwen2 (2 layers, width 32, an embedding 8 rows larger than the tokenizer, as
  Qwen's are) saved with `save_pretrained` (safetensors), its tokenizer (`write_tokenizer`) and a
  generation_config.json whose `eos_token_id` lists `<|im_end|>` and `<|endoftext|>`. `config`
  overrides `transformers.Qwen2Config` fields."""
  import torch
  import transformers

  directory = os.fspath(directory)
  tokenizer = write_tokenizer(directory)
  ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("!", '"', *SPECIALS)}
  hf_config = transformers.Qwen2Config(
    **{
      "vocab_size": len(tokenizer) + 8,
      "hidden_size": 32,
      "intermediate_size": 48,
      "num_hidden_layers": 2,
      "num_attention_heads": 4,
      "num_key_value_heads": 2,
      "max_position_embeddings": 128,
      "tie_word_embeddings": True,
      "bos_token_id": ids["<|endoftext|>"],
      "eos_token_id": ids["<|im_end|>"],
      "pad_token_id": ids["<|endoftext|>"],
      **config,
    }
  )
  torch.manual_seed(seed)
  model = transformers.Qwen2ForCausalLM(hf_config).eval()
  with torch.no_grad():  # away from the init (biases 0, norms 1), so a misplaced one shows
    for name, param in model.named_parameters():
      param.normal_(1.0 if "norm" in name else 0.0, 0.3)
  model.save_pretrained(directory)
  generation = {"eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]], "do_sample": False}
  with open(os.path.join(directory, "generation_config.json"), "w", encoding="utf-8") as f:
    json.dump({**generation, "pad_token_id": ids["<|endoftext|>"]}, f)
  return QwenArtifacts(directory, tokenizer, model, ids)


def write_prompt_file(
  path: str | os.PathLike,
  texts: list[str],
  field: str = "text",
  extra: dict[str, Any] | None = None,
) -> str:
  """`texts` as a JSONL file, one `{field: text, **extra}` object a line; returns its path."""
  path = os.fspath(path)
  with open(path, "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({field: text, **(extra or {})}) + "\n")
  return path


# The published Qwen2.5 architectures of the paper-sized decoder triple (config.json fields).
QWEN25 = {
  "oracle": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, heads=16),
  "teacher": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, heads=12),
  "student": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, heads=14),
}


def write_qwen25_configs(directory: str | os.PathLike) -> dict[str, str]:
  """config.json alone (no weights) of Qwen2.5-3B, -1.5B and -0.5B in `directory`/{oracle,
  teacher, student}, as the Hub publishes them: enough for a config whose models are their
  checkpoints' (`model.family = 'checkpoint'`) to be planned. Returns {name: directory}."""
  dirs = {}
  for name, shape in QWEN25.items():
    path = os.path.join(os.fspath(directory), name)
    os.makedirs(path, exist_ok=True)
    fields = {
      "model_type": "qwen2",
      "architectures": ["Qwen2ForCausalLM"],
      "vocab_size": 151936,
      "hidden_size": shape["hidden_size"],
      "intermediate_size": shape["intermediate_size"],
      "num_hidden_layers": shape["num_hidden_layers"],
      "num_attention_heads": shape["heads"],
      "num_key_value_heads": 2,
      "hidden_act": "silu",
      "rms_norm_eps": 1e-6,
      "rope_theta": 1000000.0,
      "tie_word_embeddings": True,
      "use_sliding_window": False,
      "max_position_embeddings": 32768,
    }
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
      json.dump(fields, f)
    dirs[name] = path
  return dirs
