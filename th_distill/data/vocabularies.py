"""Vocabularies: text <-> token ids, and the special tokens that pad and stop.

Three kinds, each with `vocab_size`, `special_tokens` (`th_distill.models.tokens.SpecialTokens`),
`encode(text)`, `decode(ids, mask=None)` and `fits(embedding_size)`:
- `SyntheticVocabulary`: the synthetic task's ids, T5's convention (`T5_TOKENS`: pad 0, EOS 1);
- `SentencePieceVocabulary`: a SentencePiece model file (T5's `spiece.model`); pad and EOS are
  the file's own (T5's are 0 and 1), a file without a pad piece pads with its EOS;
- `HuggingFaceVocabulary`: a Hugging Face directory with `tokenizer.json` (byte-level BPE of
  Qwen2 / Qwen2.5 and Llama 3, or any other model `tokenizers` reads), read with the `tokenizers`
  library; its special tokens from the directory's files (`th_distill.models.hf_tokens`), its
  chat template (`chat_template.jinja` or tokenizer_config.json's `chat_template`) for prompt
  files (`th_distill.data.chat_template`).

`decode` reads the real tokens only: the ids where `mask` is True (a response's mask includes its
EOS, which ends the text and is not rendered), or, without a mask, the ids before the first stop
id. No id is ever dropped for its value (in Qwen's vocabulary id 0 is `!`). Ids at or beyond
`vocab_size` (embedding rows no token uses) decode to nothing.

A vocabulary fits a model when every id it produces has an embedding row: the synthetic task draws
from the whole embedding, so the sizes must be equal; a real vocabulary may be smaller than the
embedding (T5's 32,100 of 32,128 rows; Qwen2.5's 151,665 tokens of 151,936 rows).
`task_vocabulary(task)` builds the task's vocabulary.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from th_distill.models import hf_tokens
from th_distill.models.tokens import T5_TOKENS, SpecialTokens


class Vocabulary(Protocol):
  vocab_size: int
  special_tokens: SpecialTokens

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, with the special tokens the tokenizer adds (a BOS, T5's EOS)."""

  def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    """Text of the real tokens of `ids` [L] (`mask` [L] True on them; else up to the first
    stop id)."""

  def fits(self, embedding_size: int) -> bool:
    """Whether a model with `embedding_size` rows can embed every id of this vocabulary."""


def real_ids(
  ids: Sequence[int], mask: Sequence[bool] | None, special: SpecialTokens, vocab_size: int
) -> list[int]:
  """The ids `decode` renders: those where `mask` is True, up to a stop id that ends them (with no
  mask: up to the first stop id), without ids >= `vocab_size`. A stop id inside a masked span
  (a chat prompt's `<|im_end|>` between turns) is kept: the mask says it is real."""
  ids = [int(i) for i in np.asarray(ids).reshape(-1)]
  if mask is None:
    stops = [k for k, i in enumerate(ids) if i in special.stop_ids]
    ids = ids[: stops[0]] if stops else ids
  else:
    ids = [i for i, real in zip(ids, np.asarray(mask).reshape(-1), strict=True) if real]
    if ids and ids[-1] in special.stop_ids:
      ids = ids[:-1]
  return [i for i in ids if i < vocab_size]


class SyntheticVocabulary:
  """The synthetic task's ids [0, vocab_size): 0 pad, 1 EOS, every other id a token `<id>`."""

  special_tokens = T5_TOKENS

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode(self, text: str) -> list[int]:
    """The ids of a text `decode` wrote ('<5> <3>' -> [5, 3])."""
    return [int(token.strip("<>")) for token in text.split()]

  def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    return " ".join(f"<{i}>" for i in real_ids(ids, mask, self.special_tokens, self.vocab_size))

  def fits(self, embedding_size: int) -> bool:
    return embedding_size == self.vocab_size


class SentencePieceVocabulary:
  """A SentencePiece model file (e.g. T5's `spiece.model` / `sentencepiece.model`): pad and EOS
  are the file's (T5's: 0 and 1; no pad piece: the EOS pads); no BOS is prepended. Raises
  FileNotFoundError for a missing file, ValueError for a file without an EOS piece."""

  def __init__(self, path: str | os.PathLike):
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"No SentencePiece model at {path!r}: use the T5 vocabulary "
        "(spiece.model in a Hugging Face T5 directory) or your own."
      )
    import sentencepiece  # the seqio extra; no TensorFlow

    self.path = path
    self._model = sentencepiece.SentencePieceProcessor(model_file=path)
    pad, eos = self._model.pad_id(), self._model.eos_id()
    if eos < 0:
      raise ValueError(f"{path}: the model has no EOS piece (train it with eos_id >= 0).")
    self.special_tokens = SpecialTokens(pad_id=pad if pad >= 0 else eos, stop_ids=(eos,))
    self.vocab_size = self._model.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (no EOS)."""
    return list(self._model.encode(text))

  def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    return self._model.decode(real_ids(ids, mask, self.special_tokens, self.vocab_size))

  def fits(self, embedding_size: int) -> bool:
    return embedding_size >= self.vocab_size


class HuggingFaceVocabulary:
  """The tokenizer of a local Hugging Face directory (`tokenizer.json`, read with the `tokenizers`
  library) with its special tokens (`hf_tokens.special_tokens`) and chat template (None if it has
  none). `encode` adds what the tokenizer's post-processor adds (Llama 3's BOS, T5's EOS), as
  `transformers`' `tokenizer(text)` does; `encode(text, add_special_tokens=False)` is how a
  rendered chat template is tokenized. `decode` renders special tokens and never "cleans up"
  spaces before punctuation (transformers >= 5 never does for BPE: it corrupts text). Raises FileNotFoundError naming the missing file."""

  def __init__(self, directory: str | os.PathLike):
    directory = os.fspath(directory)
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"No tokenizer.json in {directory!r}: expected a Hugging Face tokenizer directory "
        "(save_pretrained of a fast tokenizer: tokenizer.json, tokenizer_config.json)."
      )
    import tokenizers  # the tokenizers extra (in the test extra)

    self.directory = directory
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    self.special_tokens = hf_tokens.special_tokens(directory)
    self.vocab_size = max(self._tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    config = hf_tokens.read_json(directory, "tokenizer_config.json")
    self.token_strings = hf_tokens.token_strings(directory)  # what a chat template sees
    self.chat_template = _chat_template(directory, config)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

  def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    ids = real_ids(ids, mask, self.special_tokens, self.vocab_size)
    return self._tokenizer.decode(ids, skip_special_tokens=False)

  def fits(self, embedding_size: int) -> bool:
    return embedding_size >= self.vocab_size


def _chat_template(directory: str, config: dict[str, Any]) -> str | None:
  """chat_template.jinja (how transformers >= 4.50 save it), else tokenizer_config.json's
  `chat_template` (a string, or a list of named templates: the 'default' one)."""
  path = os.path.join(directory, "chat_template.jinja")
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = config.get("chat_template")
  if isinstance(template, list):
    named = {t.get("name"): t.get("template") for t in template}
    template = named.get("default")
  return template


def read_vocabulary(path: str | os.PathLike) -> SentencePieceVocabulary | HuggingFaceVocabulary:
  """The vocabulary at `path`: a directory with tokenizer.json (Hugging Face), else a directory
  with spiece.model / sentencepiece.model, or a SentencePiece model file. FileNotFoundError
  naming what was looked for."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    return SentencePieceVocabulary(path)
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    return HuggingFaceVocabulary(path)
  for name in ("spiece.model", "sentencepiece.model"):
    if os.path.isfile(os.path.join(path, name)):
      return SentencePieceVocabulary(os.path.join(path, name))
  raise FileNotFoundError(
    f"{path!r} holds no tokenizer.json, spiece.model or sentencepiece.model: point "
    "task.vocabulary at a Hugging Face tokenizer directory or a SentencePiece model file."
  )


def task_vocabulary(task: Any) -> Vocabulary:
  """The vocabulary of the task section (`config.task` or `TaskSection`): synthetic ids, or
  the SentencePiece file of a seqio task, or `read_vocabulary(task.vocabulary)`."""
  if task.source == "synthetic":
    return SyntheticVocabulary(task.vocab_size)
  if task.source == "seqio":  # seqio reads SentencePiece files only
    return SentencePieceVocabulary(task.vocabulary)
  if not task.vocabulary:
    raise FileNotFoundError(
      f"task.source = {task.source!r} needs task.vocabulary: a Hugging Face tokenizer "
      "directory (with tokenizer.json) or a SentencePiece model file"
    )
  return read_vocabulary(task.vocabulary)
