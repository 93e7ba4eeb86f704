"""The jitted KV-cache sampler against the teacher-forced model: greedy = argmax, log-probs,
chi-square frequencies, top-k/top-p support, stop ids (one, two, none), prompt masks deciding
what a decoder reads (not the ids), batch independence, no recompilation, and the uncached
baseline.

Kept fast by sharing compilations: one tiny model, and every test samples [N, PROMPT] prompts with
L = LENGTH unless it needs another shape, so most tests reuse the default-settings compilation.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from th_distill import sampling
from th_distill.models import T5, Decoder, decoder_config, init_params, shift_right, t5_config
from th_distill.models.tokens import T5_TOKENS, SpecialTokens

PAD_ID, EOS_ID = T5_TOKENS.pad_id, T5_TOKENS.eos_id
NEVER_STOP = SpecialTokens(pad_id=PAD_ID, stop_ids=())

VOCAB, PROMPT, LENGTH, N = 32, 5, 6, 4000
ALPHA = (
  1e-3  # false-alarm rate of each chi-square check (at a fixed seed the test is deterministic)
)


@pytest.fixture(scope="module")
def setup():
  model = T5(
    t5_config(
      "tiny",
      vocab_size=VOCAB,
      d_model=32,
      d_kv=8,
      d_ff=64,
      num_heads=2,
      num_encoder_layers=1,
      num_decoder_layers=2,
    )
  )
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  # Sharpen the output layer so that greedy paths and nuclei are non-trivial.
  params = {**params, "logits_kernel": params["logits_kernel"] * 2.0}
  forward = jax.jit(
    lambda params, prompts, tokens: model.apply(
      {"params": params}, prompts, _mask(prompts), shift_right(tokens)
    )
  )
  return model, params, forward


def _prompts(seed=1, rows=N):
  return jax.random.randint(jax.random.PRNGKey(seed), (rows, PROMPT), 2, VOCAB)


def _mask(prompts):
  """The prompt mask of `_prompts`' rows: every position is a real token."""
  return jnp.ones(prompts.shape, bool)


def _sample(model, params, prompts, rng, sampler=sampling.sample, **settings):
  """`sampler` on `prompts` (all real tokens) with T5's special tokens unless `tokens` is given."""
  settings = {"tokens": T5_TOKENS, **settings}
  return sampler(model, params, prompts, _mask(prompts), rng, **settings)


def _np(out):
  """(tokens, mask as bool, logprobs) in numpy; the mask must be float32 zeros and ones."""
  tokens, mask, logprobs = (np.asarray(x) for x in out)
  assert mask.dtype == np.float32 and np.isin(mask, (0.0, 1.0)).all()
  return tokens, mask == 1.0, logprobs


def _check_structure(tokens, mask, logprobs, special=T5_TOKENS):
  """Each row: a real prefix, a stop id (any of `special.stop_ids`) only as its last token, then
  pad tokens / 0 log-probs."""
  lengths = mask.sum(1)
  np.testing.assert_array_equal(mask, np.arange(LENGTH)[None] < lengths[:, None])
  assert np.all(tokens[~mask] == special.pad_id) and np.all(logprobs[~mask] == 0.0)
  assert np.all(logprobs[mask] <= 0.0) and np.all(np.isfinite(logprobs[mask]))
  real_eos = np.isin(tokens, special.stop_ids) & mask
  last = np.zeros_like(mask)
  last[np.arange(len(mask)), np.maximum(lengths - 1, 0)] = True
  assert not np.any(real_eos & ~last)  # no EOS before the last real token
  assert np.all(real_eos[lengths < LENGTH, lengths[lengths < LENGTH] - 1])  # short rows end in EOS
  return lengths


def test_greedy_equals_argmax_of_the_teacher_forced_forward(setup):
  model, params, forward = setup
  prompts = _prompts()
  tokens, mask, logprobs = _np(
    _sample(model, params, prompts, jax.random.PRNGKey(0), max_length=LENGTH, temperature=0.0)
  )
  _check_structure(tokens, mask, logprobs)
  logits = np.asarray(forward(params, prompts, tokens))
  argmax = logits.argmax(-1)
  chosen = np.take_along_axis(logits, tokens[..., None], -1)[..., 0]
  # Cached and teacher-forced logits differ by float rounding (~1e-6): a different argmax is only
  # allowed on a near-tie.
  assert np.all(chosen[mask] >= logits.max(-1)[mask] - 1e-5)
  assert np.mean(tokens[mask] == argmax[mask]) > 0.999
  log_softmax = np.asarray(jax.nn.log_softmax(logits))  # temperature 1, full vocabulary
  expected = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logprobs[mask], expected[mask], atol=1e-5)


def test_logprobs_are_the_teacher_forced_log_softmax(setup):
  model, params, forward = setup
  prompts = _prompts()
  tokens, mask, logprobs = _np(
    _sample(model, params, prompts, jax.random.PRNGKey(3), max_length=LENGTH)
  )
  _check_structure(tokens, mask, logprobs)
  log_softmax = np.asarray(jax.nn.log_softmax(forward(params, prompts, tokens)))
  expected = np.take_along_axis(log_softmax, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logprobs[mask], expected[mask], atol=1e-5)


def _chi_square_pvalue(observed_tokens, probs):
  """Goodness of fit of token counts to `probs` [V]; cells expecting < 5 are pooled into one."""
  probs = np.float64(probs) / np.sum(np.float64(probs))
  counts = np.bincount(observed_tokens, minlength=VOCAB).astype(np.float64)
  expected = probs * len(observed_tokens)
  rare = expected < 5
  f_obs, f_exp = list(counts[~rare]), list(expected[~rare])
  if rare.any():
    f_obs.append(counts[rare].sum())
    f_exp.append(expected[rare].sum())
  assert len(f_obs) > 5  # enough cells for the test to mean something
  return stats.chisquare(f_obs, f_exp).pvalue


def test_sample_frequencies_match_the_model_probabilities(setup):
  """N samples of one prompt: first tokens vs the first-step softmax, then second tokens given the
  most frequent (non-EOS) first token vs the model's conditional; chi-square at ALPHA each."""
  model, params, forward = setup
  prompt = np.tile(np.asarray(_prompts(seed=7, rows=1)), (N, 1))
  tokens, mask, _ = _np(_sample(model, params, prompt, jax.random.PRNGKey(11), max_length=LENGTH))
  probs = np.asarray(jax.nn.softmax(forward(params, prompt, tokens)))  # [N, L, V]
  assert _chi_square_pvalue(tokens[:, 0], probs[0, 0]) > ALPHA
  first_counts = np.bincount(tokens[:, 0], minlength=VOCAB)
  first_counts[EOS_ID] = 0
  first = first_counts.argmax()
  rows = np.flatnonzero(tokens[:, 0] == first)
  assert len(rows) > 500 and mask[rows, 1].all()
  assert _chi_square_pvalue(tokens[rows, 1], probs[rows[0], 1]) > ALPHA


def _sorted_probs(forward, params, prompts, tokens, temperature=1.0):
  """Teacher-forced probabilities [N, L, V] at `temperature`, their descending sort and each
  token's rank."""
  logits = np.asarray(forward(params, prompts, tokens), np.float64) / temperature
  probs = special.softmax(logits, axis=-1)
  order = np.argsort(-probs, axis=-1, kind="stable")
  ranks = np.argsort(order, axis=-1)
  return (
    probs,
    np.take_along_axis(probs, order, -1),
    np.take_along_axis(ranks, tokens[..., None], -1)[..., 0],
  )


def test_top_k_emits_only_the_k_most_likely_tokens(setup):
  """With temperature 0.7: log-probs are those of softmax(logits / 0.7) renormalised on the top k."""
  model, params, forward = setup
  k, temperature = 3, 0.7
  prompts = _prompts(seed=4)
  tokens, mask, logprobs = _np(
    _sample(
      model,
      params,
      prompts,
      jax.random.PRNGKey(2),
      max_length=LENGTH,
      top_k=k,
      temperature=temperature,
    )
  )
  _check_structure(tokens, mask, logprobs)
  probs, sorted_probs, rank = _sorted_probs(forward, params, prompts, tokens, temperature)
  chosen = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]
  # Rank < k, up to float near-ties with the k-th most likely token.
  assert np.all(chosen[mask] >= sorted_probs[..., k - 1][mask] * (1 - 1e-4))
  assert np.mean(rank[mask] < k) > 0.999 and np.any(rank[mask] == k - 1)
  renormalised = np.log(chosen / sorted_probs[..., :k].sum(-1))
  np.testing.assert_allclose(logprobs[mask], renormalised[mask], atol=1e-4)


def test_top_p_emits_only_tokens_of_the_nucleus(setup):
  model, params, forward = setup
  top_p = 0.8
  prompts = _prompts(seed=5)
  tokens, mask, logprobs = _np(
    _sample(model, params, prompts, jax.random.PRNGKey(2), max_length=LENGTH, top_p=top_p)
  )
  _check_structure(tokens, mask, logprobs)
  probs, sorted_probs, rank = _sorted_probs(forward, params, prompts, tokens)
  mass_before = np.cumsum(sorted_probs, -1) - sorted_probs
  # Nucleus = the smallest prefix of the sorted tokens whose mass reaches top_p; a slack of 1e-4
  # on top_p absorbs the float differences between cached and teacher-forced probabilities.
  size = (mass_before < top_p).sum(-1)
  size_hi, size_lo = (mass_before < top_p + 1e-4).sum(-1), (mass_before < top_p - 1e-4).sum(-1)
  assert np.all(rank[mask] < size_hi[mask])
  assert np.mean(rank[mask] < size[mask]) > 0.999
  assert 1 < np.median(size[mask]) < VOCAB / 2  # the nucleus is a non-trivial restriction
  clear = mask & (size_hi == size_lo)
  assert clear.mean() > 0.9 * mask.mean()
  nucleus_mass = np.take_along_axis(np.cumsum(sorted_probs, -1), size[..., None] - 1, -1)[..., 0]
  chosen = np.take_along_axis(probs, tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logprobs[clear], np.log(chosen / nucleus_mass)[clear], atol=1e-4)


def _eos_as_frequent(model, params, prompts, key):
  """`params` whose EOS takes the output column of the most frequent other token (likely but
  not certain, so rows end at every length), and the two most frequent other tokens."""
  tokens, _, _ = _np(_sample(model, params, prompts, key, max_length=LENGTH))
  counts = np.bincount(tokens.ravel(), minlength=VOCAB)
  counts[[PAD_ID, EOS_ID]] = 0
  frequent, other = np.argsort(-counts, kind="stable")[:2]
  kernel = params["logits_kernel"]
  return {**params, "logits_kernel": kernel.at[:, EOS_ID].set(kernel[:, frequent])}, other


def test_eos_ends_a_sequence(setup):
  model, params, _ = setup
  prompts = _prompts()
  key = jax.random.PRNGKey(4)
  eos_params, _ = _eos_as_frequent(model, params, prompts, key)
  out = _np(_sample(model, eos_params, prompts, key, max_length=LENGTH))
  lengths = _check_structure(*out)
  assert set(lengths) == set(range(1, LENGTH + 1))  # every stopping point, and full length
  # Rows are sampled independently: those that did not stop match an eos_id = -1 run up to there.
  free = _np(_sample(model, eos_params, prompts, key, max_length=LENGTH, tokens=NEVER_STOP))
  np.testing.assert_array_equal(out[0][out[1]], free[0][out[1]])
  assert free[1].all()


def test_every_stop_id_ends_a_sequence_and_no_stop_ids_never_stop(setup):
  """Two stop ids: a row ends at whichever it emits first; with `stop_ids=()` rows run to full
  length through both."""
  model, params, _ = setup
  prompts = _prompts()
  key = jax.random.PRNGKey(4)
  # The second stop id is the next most frequent token itself: both likely, neither certain.
  stop_params, other = _eos_as_frequent(model, params, prompts, key)
  two = SpecialTokens(pad_id=PAD_ID, stop_ids=(EOS_ID, int(other)))
  out = _np(_sample(model, stop_params, prompts, key, max_length=LENGTH, tokens=two))
  lengths = _check_structure(*out, special=two)
  assert set(lengths) == set(range(1, LENGTH + 1))
  short = lengths < LENGTH
  last = out[0][short, lengths[short] - 1]
  assert set(np.unique(last)) == {EOS_ID, int(other)}  # rows stop on either id
  # EOS alone: rows run on through `other`, which then appears before a row's last token.
  eos_only = _np(_sample(model, stop_params, prompts, key, max_length=LENGTH))
  _check_structure(*eos_only)
  inner = eos_only[1].copy()
  inner[np.arange(N), eos_only[1].sum(1) - 1] = False
  assert np.any((eos_only[0] == other) & inner)
  # No stop ids: every row is full length, and emits both stop ids inside it; the rows match the
  # two-stop run up to where that one stopped (rows are sampled independently).
  free = _np(_sample(model, stop_params, prompts, key, max_length=LENGTH, tokens=NEVER_STOP))
  _check_structure(*free, special=NEVER_STOP)
  assert free[1].all()
  inside = free[0][:, :-1]
  assert np.any(inside == EOS_ID) and np.any(inside == other)
  np.testing.assert_array_equal(out[0][out[1]], free[0][out[1]])
  np.testing.assert_allclose(out[2][out[1]], free[2][out[1]], atol=1e-6)


def _assert_the_mask_decides(model, params, special):
  """A prompt whose real tokens include ids 0 and 1 gives the same logits and samples wherever it
  sits in the row and whatever fills the rest (the pad id, 0, 1 and the stop id); marking the
  filler as real does change them."""
  real = [0, 1, 9, 0, 1]
  prompts = np.array(
    [
      real + [special.pad_id] * 3,  # right padding with the pad id
      [0, 0, 0] + real,  # left padding with ids 0
      [1, special.stop_ids[0]] + real + [1],  # padding on both sides with 1 and the stop id
    ],
    np.int32,
  )
  mask = np.zeros(prompts.shape, bool)
  mask[0, :5] = mask[1, 3:] = mask[2, 2:7] = True
  responses = jnp.asarray(jax.random.randint(jax.random.PRNGKey(2), (1, LENGTH), 0, VOCAB))
  responses = jnp.tile(responses, (3, 1))

  def logits(mask):
    apply = model.apply
    return np.asarray(apply({"params": params}, prompts, mask, responses, method="response_logits"))

  forced = logits(mask)
  np.testing.assert_allclose(forced[1], forced[0], atol=1e-5, rtol=0)
  np.testing.assert_allclose(forced[2], forced[0], atol=1e-5, rtol=0)
  # The filler read as prompt tokens changes the logits: the mask is what the equality rests on.
  assert np.abs(logits(np.ones_like(mask))[0] - forced[0]).max() > 1e-2
  keys = jnp.stack([jax.random.PRNGKey(8)] * 3)  # the same key for the three rows
  settings = dict(max_length=LENGTH, tokens=special)
  for fn, temperature in (
    (sampling.sample, 1.0),
    (sampling.sample_uncached, 1.0),
    (sampling.sample, 0.0),
  ):
    out = _np(fn(model, params, prompts, mask, keys, temperature=temperature, **settings))
    _check_structure(*out, special=special)
    for row in (1, 2):
      np.testing.assert_array_equal(out[0][row], out[0][0])
      np.testing.assert_array_equal(out[1][row], out[1][0])
      np.testing.assert_allclose(out[2][row], out[2][0], atol=1e-5)


def test_the_prompt_mask_not_the_ids_decides_what_a_decoder_reads():
  """A decoder-only model whose pad id (5) and stop id (7) are not 0 and 1, so that ids 0 and 1
  are ordinary prompt tokens."""
  model = Decoder(decoder_config("tiny", vocab_size=VOCAB, num_layers=2))
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  _assert_the_mask_decides(model, params, SpecialTokens(pad_id=5, stop_ids=(7,)))


def test_the_prompt_mask_not_the_ids_decides_what_t5_encodes(setup):
  """T5 (pad 0, EOS 1) reads the same: a prompt's ids 0 and 1 are encoded where the mask says
  they are real, and its relative positions make the offset in the row irrelevant."""
  model, params, _ = setup
  _assert_the_mask_decides(model, params, T5_TOKENS)


def test_a_second_call_does_not_recompile(setup):
  model, params, _ = setup
  _sample(model, params, _prompts(seed=1), jax.random.PRNGKey(0), max_length=LENGTH)
  cache_size = sampling.sample._cache_size()
  other_params = jax.tree_util.tree_map(lambda x: x * 1.01, params)
  _sample(model, other_params, _prompts(seed=2), jax.random.PRNGKey(1), max_length=LENGTH)
  assert sampling.sample._cache_size() == cache_size
  _sample(model, params, _prompts(rows=3), jax.random.PRNGKey(0), max_length=LENGTH)
  assert sampling.sample._cache_size() == cache_size + 1  # a new shape does compile


def test_a_sample_does_not_depend_on_the_rest_of_the_batch(setup):
  """Same prompt + same per-example key = same sample, whatever the batch size, the row's position
  and the other rows (what makes the sampler safe to shard)."""
  model, params, _ = setup
  prompts = np.asarray(_prompts())
  keys = jax.random.split(jax.random.PRNGKey(9), N)
  full = _np(_sample(model, params, prompts, keys, max_length=LENGTH))
  # Same shape, other composition: shuffled rows, half of them replaced by other prompts.
  perm = np.random.default_rng(0).permutation(N)
  mixed = prompts[perm].copy()
  mixed[N // 2 :] = np.asarray(_prompts(seed=2))[N // 2 :]
  out = _np(_sample(model, params, mixed, keys[perm], max_length=LENGTH))
  np.testing.assert_array_equal(out[0][: N // 2], full[0][perm[: N // 2]])
  np.testing.assert_array_equal(out[1][: N // 2], full[1][perm[: N // 2]])
  np.testing.assert_allclose(out[2][: N // 2], full[2][perm[: N // 2]], atol=1e-5)
  # Another batch size: 7 rows in another order.
  rows = np.array([3, 0, 5, 1234, 3999, 17, 2])
  out = _np(_sample(model, params, prompts[rows], keys[rows], max_length=LENGTH))
  np.testing.assert_array_equal(out[0], full[0][rows])
  np.testing.assert_array_equal(out[1], full[1][rows])
  np.testing.assert_allclose(out[2], full[2][rows], atol=1e-5)  # float rounding


def test_cached_and_uncached_sampling_agree(setup):
  model, params, _ = setup
  prompts = _prompts(seed=6)
  key = jax.random.PRNGKey(5)
  cached = _np(_sample(model, params, prompts, key, max_length=LENGTH))
  uncached = _np(_sample(model, params, prompts, key, sampling.sample_uncached, max_length=LENGTH))
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_array_equal(cached[1], uncached[1])
  np.testing.assert_allclose(cached[2], uncached[2], atol=1e-5)
  assert not cached[1].all()  # EOS occurred, so the masking after it is compared too


def test_cached_sampling_across_cache_segments(setup):
  """Beyond 64 positions the cache grows by segments (64, 128, then L): the same samples."""
  model, params, _ = setup
  prompts, key = _prompts(seed=7, rows=8), jax.random.PRNGKey(6)
  assert sampling.cache_segments(150) == [64, 128, 150]
  cached = _np(_sample(model, params, prompts, key, max_length=150, tokens=NEVER_STOP))
  uncached = _np(
    _sample(
      model, params, prompts, key, sampling.sample_uncached, max_length=150, tokens=NEVER_STOP
    )
  )
  np.testing.assert_array_equal(cached[0], uncached[0])
  np.testing.assert_allclose(cached[2], uncached[2], atol=1e-5)


def test_example_keys():
  raw, typed = jax.random.PRNGKey(0), jax.random.key(0)
  assert sampling.example_keys(raw, 5).shape == (5, 2)
  assert sampling.example_keys(typed, 5).shape == (5,)
  keys = jax.random.split(typed, 3)
  assert sampling.example_keys(keys, 3) is keys
  with pytest.raises(ValueError, match="one per example"):
    sampling.example_keys(keys, 4)
  with pytest.raises(ValueError, match="one per example"):
    sampling.example_keys(jnp.zeros((3, 2, 2), jnp.uint32), 3)


@pytest.mark.parametrize(
  "kwargs, field",
  [
    (dict(max_length=0), "max_length"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
  ],
)
def test_bad_arguments_are_named(setup, kwargs, field):
  model, params, _ = setup
  for fn in (sampling.sample, sampling.sample_uncached):
    with pytest.raises(ValueError, match=field):
      _sample(
        model, params, _prompts(rows=2), jax.random.PRNGKey(0), fn, **{"max_length": 3, **kwargs}
      )


def test_bad_prompts_and_tokens_are_named(setup):
  model, params, _ = setup
  prompts, key = _prompts(rows=2), jax.random.PRNGKey(0)
  for fn in (sampling.sample, sampling.sample_uncached):
    with pytest.raises(ValueError, match="prompt_mask"):
      fn(model, params, prompts, _mask(prompts)[:, :-1], key, max_length=3, tokens=T5_TOKENS)
    with pytest.raises(ValueError, match="tokens must be"):
      fn(model, params, prompts, _mask(prompts), key, max_length=3, tokens=EOS_ID)
  empty = _mask(prompts).at[1].set(False)
  with pytest.raises(ValueError, match=r"prompt_mask rows \[1\] mark no real prompt token"):
    sampling.sample(model, params, prompts, empty, key, max_length=3, tokens=T5_TOKENS)
  with pytest.raises(ValueError, match=f"prompt ids must be in \\[0, {VOCAB}\\)"):
    sampling.sample(
      model,
      params,
      prompts.at[0, 0].set(VOCAB),
      _mask(prompts),
      key,
      max_length=3,
      tokens=T5_TOKENS,
    )
