"""Synthetic prompt source: Zipf-distributed token sequences, split into disjoint pools.

A prompt is a row of `length` token ids in [2, vocab_size) (0 is padding, 1 is EOS). Token
frequencies follow a Zipf law over a seed-dependent ranking of the vocabulary, so a few tokens are
common and most are rare, as in text.
"""

from __future__ import annotations

import numpy as np

FIRST_TOKEN = 2  # ids 0 (pad) and 1 (EOS) never appear in prompts


def zipf_prompts(
  seed: int, num: int, length: int, vocab_size: int, exponent: float = 1.1
) -> np.ndarray:
  """`num` distinct prompts [num, length] int32 drawn from a Zipf law over the vocabulary."""
  if vocab_size <= FIRST_TOKEN + 1:
    raise ValueError(f"vocab_size must exceed {FIRST_TOKEN + 1}, got {vocab_size}.")
  rng = np.random.default_rng(seed)
  tokens = np.arange(FIRST_TOKEN, vocab_size)
  ranking = rng.permutation(tokens)
  probs = 1.0 / np.arange(1, len(tokens) + 1) ** exponent
  probs /= probs.sum()
  # Compared in log space: len(tokens) ** length overflows a float for T5-sized vocabularies.
  if np.log(4 * num) > length * np.log(len(tokens)):
    raise ValueError(
      f"Cannot draw {num} distinct prompts of length {length} over "
      f"{len(tokens)} tokens; use longer prompts or fewer of them."
    )
  rows: list[np.ndarray] = []
  seen: set[bytes] = set()
  while len(rows) < num:
    draw = ranking[rng.choice(len(tokens), size=(2 * (num - len(rows)) + 16, length), p=probs)]
    for row in draw.astype(np.int32):
      key = row.tobytes()
      if key not in seen:
        seen.add(key)
        rows.append(row)
        if len(rows) == num:
          break
  return np.stack(rows)


def split_pools(prompts: np.ndarray, sizes: dict[str, int]) -> dict[str, np.ndarray]:
  """Consecutive, disjoint slices of `prompts` [P, L]: {name: [sizes[name], L]} in dict order."""
  total = sum(sizes.values())
  if total > len(prompts):
    raise ValueError(f"Pools need {total} prompts ({sizes}) but only {len(prompts)} exist.")
  pools, start = {}, 0
  for name, size in sizes.items():
    pools[name] = prompts[start : start + size]
    start += size
  return pools
