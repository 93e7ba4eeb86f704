"""`Batch`: the unit every producer of stage-2 data returns and every step consumes.

Shapes: B rows, Li prompt length, Lt response length. The mask is float32 (1.0 on the real
response tokens, EOS included; 0.0 after), the dtype of `sampling.SampleOutput.mask`, so that
masked sums and means need no conversion.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TeacherTopK:
  """The teacher truncated to its K most probable tokens at each response position
  (`divergences.top_k_log_probs` at the loss temperature): what an offline dataset of top-k
  teacher logits stores."""

  values: jax.Array  # [B, Lt, K] float32 log-probabilities, descending
  indices: jax.Array  # [B, Lt, K] int32 token ids
  tail: jax.Array  # [B, Lt] float32 log of the probability outside the K (-inf if none)


@flax.struct.dataclass
class Batch:
  """Prompts, responses and their mask, and the stored truncated teacher where the data carries
  one (else None: the step computes what it needs from the teacher); a pytree (every array is a
  leaf)."""

  prompts: jax.Array  # [B, Li] int32, 0 = padding
  responses: jax.Array  # [B, Lt] int32, 0 after EOS
  mask: jax.Array  # [B, Lt] float32, 1.0 on real response tokens (EOS included)
  teacher_top: TeacherTopK | None = None

  @property
  def num_tokens(self) -> jax.Array:
    """[] float32: the real response tokens of the batch."""
    return jnp.sum(self.mask)
