"""The special tokens of a local Hugging Face directory, read from its files (JSON only: neither
`tokenizers` nor `transformers` is imported).

The files read, all optional but at least one naming an EOS or a pad token:
- `tokenizer_config.json`, then `special_tokens_map.json` for what it lacks: `pad_token`,
  `eos_token`, `bos_token` (a string or an `{"content": ...}` entry), resolved to ids through
  `tokenizer.json` (its `added_tokens` and its model's vocabulary) and `added_tokens_decoder`;
- `generation_config.json` when it names `eos_token_id` / `pad_token_id`, else `config.json`
  (what `transformers`' generation does); `eos_token_id` may be an int or a list.

The rules (`special_tokens`):
- stop ids: the tokenizer's `eos_token` first (the EOS a response ends with), then every
  `eos_token_id` of the generation config (Qwen2.5-Instruct: `<|im_end|>` and `<|endoftext|>`);
- pad: the tokenizer's `pad_token`, else the configs' `pad_token_id`, else the EOS (as
  `transformers`' generation pads with the EOS when a model has no pad token). Padding is a filler
  only: masks say which positions are real;
- bos: the tokenizer's `bos_token` (Llama 3's `<|begin_of_text|>`, which its tokenizer prepends),
  else None. `config.json`'s `bos_token_id` is not read: Qwen2 names `<|endoftext|>` there, but
  neither its tokenizer nor its texts begin with it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from th_distill.models.tokens import SpecialTokens

TOKEN_FIELDS = ("pad_token", "eos_token", "bos_token")
# The named special tokens of `transformers` (`SPECIAL_TOKENS_ATTRIBUTES`): what a chat template sees.
NAMED_TOKENS = (
  "bos_token",
  "eos_token",
  "unk_token",
  "sep_token",
  "pad_token",
  "cls_token",
  "mask_token",
)


def read_json(directory: str | os.PathLike, name: str) -> dict[str, Any]:
  """The JSON object in `directory/name`, {} when the file is absent."""
  path = os.path.join(os.fspath(directory), name)
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _content(value: Any) -> str | None:
  """A special token as tokenizer_config.json writes it: a string, {"content": ...} or null."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def token_strings(directory: str | os.PathLike) -> dict[str, str]:
  """{'pad_token' | 'eos_token' | 'bos_token' | ...: text} of the `NAMED_TOKENS` that
  tokenizer_config.json names, then special_tokens_map.json for those it lacks (what
  `transformers` reads)."""
  strings: dict[str, str] = {}
  for name in ("tokenizer_config.json", "special_tokens_map.json"):
    for key, value in read_json(directory, name).items():
      text = _content(value) if key in NAMED_TOKENS else None
      if text is not None and key not in strings:
        strings[key] = text
  return strings


def vocabulary_ids(directory: str | os.PathLike) -> dict[str, int]:
  """Token text -> id of the tokenizer in `directory`: tokenizer.json's model vocabulary (a dict
  for BPE / WordPiece, a list of [piece, score] for Unigram) and its added tokens, and
  tokenizer_config.json's `added_tokens_decoder`."""
  tokenizer = read_json(directory, "tokenizer.json")
  vocab = (tokenizer.get("model") or {}).get("vocab") or {}
  ids = dict(vocab) if isinstance(vocab, dict) else {e[0]: i for i, e in enumerate(vocab)}
  ids.update({t["content"]: t["id"] for t in tokenizer.get("added_tokens") or []})
  decoder = read_json(directory, "tokenizer_config.json").get("added_tokens_decoder") or {}
  ids.update({_content(v): int(k) for k, v in decoder.items() if _content(v) is not None})
  return ids


def _id_list(value: Any) -> list[int]:
  if value is None:
    return []
  return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _generation_ids(directory: str | os.PathLike, key: str) -> list[int]:
  """`key` ('eos_token_id' | 'pad_token_id') of generation_config.json, else config.json."""
  for name in ("generation_config.json", "config.json"):
    ids = _id_list(read_json(directory, name).get(key))
    if ids:
      return ids
  return []


def _token_id(directory: str | os.PathLike, field: str, text: str, ids: dict[str, int]) -> int:
  if text not in ids:
    raise ValueError(
      f"{os.fspath(directory)}: {field} = {text!r} (tokenizer_config.json) is not a token of "
      "its tokenizer.json"
    )
  return ids[text]


def special_tokens(directory: str | os.PathLike) -> SpecialTokens:
  """The pad, stop and BOS ids of the Hugging Face directory (module docstring: the rules);
  ValueError naming the directory when no file names an EOS or a pad token, or a named token
  is not in the tokenizer."""
  strings, ids = token_strings(directory), vocabulary_ids(directory)
  named = {f: _token_id(directory, f, strings[f], ids) for f in TOKEN_FIELDS if f in strings}
  stop_ids = list(
    dict.fromkeys(_id_list(named.get("eos_token")) + _generation_ids(directory, "eos_token_id"))
  )
  pad_ids = _id_list(named.get("pad_token")) + _generation_ids(directory, "pad_token_id")
  pad_ids += stop_ids[:1]
  if not pad_ids:
    raise ValueError(
      f"{os.fspath(directory)}: no EOS and no pad token in tokenizer_config.json, "
      "special_tokens_map.json, generation_config.json or config.json"
    )
  return SpecialTokens(pad_id=pad_ids[0], stop_ids=tuple(stop_ids), bos_id=named.get("bos_token"))
