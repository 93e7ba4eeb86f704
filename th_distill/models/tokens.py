"""Special tokens: which ids pad, stop and begin a sequence, as the model's files say.

`SpecialTokens` is read from a tokenizer and a checkpoint (`th_distill.data.vocabularies`: a Hugging
Face `tokenizer.json` with its `tokenizer_config.json`, `special_tokens_map.json`, the checkpoint's
`config.json` and `generation_config.json`; a SentencePiece model file), never assumed. Padding is
a filler only: which prompt and response positions are real is always carried by explicit masks
(`th_distill.data.batch.Batch.prompt_mask` and `.mask`), so `pad_id` may be an ordinary token of
the vocabulary without changing any result. `T5_TOKENS` is T5's convention (pad 0, EOS 1), the
synthetic task's too.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """`pad_id`: the filler of padded prompt and response positions; `stop_ids`: every id that ends
  a response (the EOS first, then extra stop ids such as Qwen's `<|im_end|>`), non-empty, or
  empty for responses that never stop; `bos_id`: the id a family prepends to every sequence
  (None when it has none; the tokenizer adds it, the models never do)."""

  pad_id: int
  stop_ids: tuple[int, ...]
  bos_id: int | None = None

  def __post_init__(self):
    ids = (self.pad_id, *self.stop_ids) + (() if self.bos_id is None else (self.bos_id,))
    if not all(isinstance(i, int) and i >= 0 for i in ids):
      raise ValueError(f"special token ids must be ints >= 0, got {self}.")
    if len(set(self.stop_ids)) != len(self.stop_ids):
      raise ValueError(f"stop_ids must be distinct, got {self.stop_ids}.")

  @property
  def eos_id(self) -> int | None:
    """The end-of-sequence id (the first stop id), None if responses never stop."""
    return self.stop_ids[0] if self.stop_ids else None

  def problems(self, vocab_size: int) -> list[str]:
    """What makes these ids unusable with a `vocab_size`-row embedding ([] if nothing)."""
    named = [("pad_id", self.pad_id), ("bos_id", self.bos_id)]
    named += [(f"stop_ids[{i}]", s) for i, s in enumerate(self.stop_ids)]
    return [
      f"{name} = {value} is outside the embedding [0, {vocab_size})"
      for name, value in named
      if value is not None and value >= vocab_size
    ]


T5_TOKENS = SpecialTokens(pad_id=0, stop_ids=(1,))
