"""Vocabularies: the synthetic task's token ids, or a SentencePiece model given by path.

Both follow T5's conventions: id 0 is padding (and the decoder start), id 1 is EOS. A
vocabulary fits a model when every id it produces has an embedding row: the synthetic task
draws from the whole embedding, so the sizes must be equal; a SentencePiece vocabulary may be
smaller than the embedding (T5's 32,000 pieces + 100 sentinels fill 32,100 of 32,128 rows).
`task_vocabulary(config.task)` builds the task's vocabulary; only `sentencepiece` is imported
(not TensorFlow).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import ml_collections

from th_distill.models.tokens import T5_TOKENS


class Vocabulary(Protocol):
  vocab_size: int

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, up to the first EOS; padding is dropped."""

  def fits(self, embedding_size: int) -> bool:
    """Whether a model with `embedding_size` rows can embed every id of this vocabulary."""


def _until_eos(ids: Sequence[int]) -> list[int]:
  ids = [int(i) for i in ids]
  ids = ids[: ids.index(T5_TOKENS.eos_id)] if T5_TOKENS.eos_id in ids else ids
  return [i for i in ids if i != T5_TOKENS.pad_id]


class SyntheticVocabulary:
  """The synthetic task's ids [0, vocab_size): 0 pad, 1 EOS, every other id a token `<id>`."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size
    self.special_tokens = T5_TOKENS

  def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    if mask is not None:
      ids = [i for i, real in zip(ids, mask) if real]
    return " ".join(f"<{i}>" for i in _until_eos(ids))

  def fits(self, embedding_size: int) -> bool:
    return embedding_size == self.vocab_size


class SentencePieceVocabulary:
  """A SentencePiece model file (e.g. T5's `spiece.model` / `sentencepiece.model`).

  Raises FileNotFoundError for a missing file and ValueError when its pad or EOS id is not
  T5's (0 and 1).
  """

  def __init__(self, path: str):
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"No SentencePiece model at {path!r}: use the T5 vocabulary "
        "(spiece.model in a Hugging Face T5 directory) or your own."
      )
    import sentencepiece  # the seqio extra; no TensorFlow

    self.path = path
    self._model = sentencepiece.SentencePieceProcessor(model_file=path)
    ids = (self._model.pad_id(), self._model.eos_id())
    if ids != (T5_TOKENS.pad_id, T5_TOKENS.eos_id):
      raise ValueError(
        f"{path}: pad and EOS ids are {ids}; T5 models need ({T5_TOKENS.pad_id}, "
        f"{T5_TOKENS.eos_id}) (train it with pad_id=0 eos_id=1 unk_id=2 bos_id=-1)."
      )
    self.vocab_size = self._model.get_piece_size()
    self.special_tokens = T5_TOKENS

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (no EOS)."""
    return list(self._model.encode(text))

  def decode(self, ids: Sequence[int]) -> str:
    return self._model.decode([i for i in _until_eos(ids) if i < self.vocab_size])

  def fits(self, embedding_size: int) -> bool:
    return embedding_size >= self.vocab_size


def task_vocabulary(task: ml_collections.ConfigDict) -> Vocabulary:
  """The vocabulary of `config.task`: synthetic ids, or `task.vocabulary` for real tasks."""
  if task.source == "synthetic":
    return SyntheticVocabulary(task.vocab_size)
  return SentencePieceVocabulary(task.vocabulary)
