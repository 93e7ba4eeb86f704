"""The model interface: what the rest of th_distill needs of a language model, and nothing more.

A model is a Flax linen module built from a frozen, hashable config. Two protocols:

`ModelConfig` (the config; a model sub-config of a run names it by its `family`, and
`th_distill.models.module_of(config)` builds its family's `LanguageModel` from it):
  - `family` (class attribute), `vocab_size`, `d_model`, `dtype`, `param_dtype`;
  - analytic costs from the shapes alone, per example of Li prompt and Lt response tokens:
    `forward_flops(Li, Lt)` (one teacher-forced pass: the training and evaluation steps, the
    plan), `generation_flops(Li, Lt)` (sampling Lt tokens), and for the memory planner (float32
    bytes) `activation_bytes(rows, Li, Lt, model_split)` (what the backward pass keeps),
    `working_set_bytes(rows, Li, Lt, model_split)` (one layer of a forward-only pass; Lt = 0:
    over the prompt alone, the sampler's), `kv_cache_bytes(rows, Li, Lt, model_split)` (the sampler's cache);
  - `describe()`: one line for the run's plan ('d_model 64, 2+2 layers').
  A config class that subclasses `ModelConfig` inherits its defaults: `describe()` (the family
  and `d_model`) and `generation_flops` (= `forward_flops`: sampling with a cache costs about
  one teacher-forced pass); the other costs have no default and are required.

`LanguageModel` (the module; called through `model.apply({'params': params}, ..., method=NAME)`,
logits float32; `prompt_mask` [B, Li] bool marks the real prompt tokens, and no method infers
padding from a token id):
  - `model.init(rng, prompts [1, Li], prompt_mask [1, Li], responses [1, Lt])`: parameters, every one annotated with
    logical axis names (`nn.with_logical_partitioning`) from the vocabulary of
    `th_distill.partitioning.DEFAULT_RULES` (`batch, length, vocab, embed, heads, kv_heads, kv,
    mlp, relpos_buckets, layers`), so the mesh rules shard it with no code of its own;
  - `response_logits(prompts [B, Li], prompt_mask [B, Li], responses [B, Lt], train)` ->
    [B, Lt, V]: teacher forcing,
    position t predicting `responses[:, t]` (the SFT and distillation steps, the evaluator, the
    oracle's calibration, the uncached sampler);
  - `response_hidden(prompts, prompt_mask, responses, train)` -> [B, Lt, E] and
    `logits_from_hidden(hidden [..., E], train)` -> [..., V]: the same logits in two halves, so
    the steps can build them a chunk of positions at a time (`sequence_chunks`);
  - `start_decode(prompts, prompt_mask, max_decode_length)` -> (first token [B] int32, cache) and
    `decode_step(token [B], cache)` -> (logits [B, V], cache): incremental decoding; feeding the
    first token and then each sampled one gives, step by step, the logits `response_logits`
    gives position by position (the sampler's `lax.while_loop`);
  - `extend_cache(cache, max_decode_length)` (a static method, no parameters): the cache with
    room for more fed tokens (the sampler grows it segment by segment).
  `train` enables dropout (with a 'dropout' rng); `__call__(prompts, prompt_mask, responses, train)` is what
  `init` traces (the response logits, usually). `th_distill.models.T5` and
  `th_distill.models.Decoder` implement `LanguageModel` (with `T5Config` and `DecoderConfig`);
  `register_family(config_class, module_class)` adds another family, checking both classes
  against these protocols (`th_distill.models.families`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import jax

Array = jax.Array
Cache = Any
# The members of the protocols below with a default (a class that subclasses one inherits it).
DEFAULTS = ("describe", "generation_flops")


@runtime_checkable
class ModelConfig(Protocol):
  """A model's frozen, hashable configuration (see the module doc)."""

  family: ClassVar[str]
  vocab_size: int
  d_model: int
  dtype: str
  param_dtype: str

  def describe(self) -> str:
    """One line for the run's plan (default: the family and `d_model`)."""
    return f"{self.family}, d_model {self.d_model}"

  def forward_flops(self, input_length: int, target_length: int) -> float: ...

  def generation_flops(self, input_length: int, target_length: int) -> float:
    """FLOPs of sampling `target_length` tokens per example (default: `forward_flops`, what a
    cached decoder costs to within its attention over the cache)."""
    return self.forward_flops(input_length, target_length)

  def activation_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float: ...

  def working_set_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float: ...

  def kv_cache_bytes(
    self, rows: float, prompt_length: int, response_length: int, model_split: int
  ) -> float: ...


@runtime_checkable
class LanguageModel(Protocol):
  """A Flax module the sampler, the steps and the planners can use (see the module doc)."""

  cfg: Any

  def __call__(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array: ...

  def response_logits(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array: ...

  def response_hidden(
    self, prompts: Array, prompt_mask: Array, responses: Array, train: bool = False
  ) -> Array: ...

  def logits_from_hidden(self, hidden: Array, train: bool = False) -> Array: ...

  def start_decode(
    self, prompts: Array, prompt_mask: Array, max_decode_length: int
  ) -> tuple[Array, Cache]: ...

  def decode_step(self, token: Array, cache: Cache) -> tuple[Array, Cache]: ...

  @staticmethod
  def extend_cache(cache: Cache, max_decode_length: int) -> Cache: ...
