"""Masks, not magic ids, on a real tokenizer: a byte-level BPE whose ids 0 and 1 are the ordinary
tokens `!` and `"`, with a tiny random Qwen2 saved by `transformers` (tests/hf_artifacts.py) and
read by `load_checkpoint`. On prompts that contain ids 0 and 1, padded with the model's real pad
id, our teacher-forced logits and greedy responses (stopped by the stop ids of its
generation_config.json) equal `transformers`' on the unpadded prompts."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hf_artifacts import write_qwen2

from th_distill.data.batch import PromptSet
from th_distill.models import module_of
from th_distill.models.pretrained import load_checkpoint
from th_distill.models.tokens import SpecialTokens
from th_distill.sampling import sample

TEXTS = ["Stop! now then", 'She said "no" twice!', "Why?", '"quoted" text!']
PROMPT_LENGTH = 12
RESPONSE_LENGTH = 10


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
  artifacts = write_qwen2(tmp_path_factory.mktemp("qwen2"))
  checkpoint = load_checkpoint(artifacts.directory)
  rows = [artifacts.tokenizer(text)["input_ids"] for text in TEXTS]
  prompts = PromptSet.of_rows(rows, PROMPT_LENGTH, checkpoint.special_tokens.pad_id)
  return artifacts, checkpoint, rows, prompts


def test_prompts_hold_ids_0_and_1_and_the_pad_is_the_models(qwen):
  artifacts, checkpoint, rows, prompts = qwen
  ids = {i for row in rows for i in row}
  assert {0, 1} <= ids and artifacts.ids["!"] == 0 and artifacts.ids['"'] == 1
  tokens = checkpoint.special_tokens
  assert tokens.pad_id == artifacts.ids["<|endoftext|>"] != 0
  assert set(tokens.stop_ids) == {artifacts.ids["<|im_end|>"], artifacts.ids["<|endoftext|>"]}
  assert prompts.mask.sum(axis=1).tolist() == [len(row) for row in rows]


def _hf_logits(model, ids: list[int]) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.tensor([ids])).logits[0].numpy()


def test_teacher_forced_logits_equal_transformers(qwen):
  artifacts, checkpoint, rows, prompts = qwen
  responses = np.random.default_rng(0).integers(0, 40, (len(rows), RESPONSE_LENGTH))
  responses[:, :2] = [0, 1]  # the ids a magic-id model would take for padding and EOS
  ours = module_of(checkpoint.config).apply(
    {"params": checkpoint.params},
    prompts.tokens,
    prompts.mask,
    responses,
    method="response_logits",
  )
  for b, row in enumerate(rows):
    theirs = _hf_logits(artifacts.model, row + responses[b].tolist())
    # Position len(row) - 1 + t predicts response token t.
    expected = theirs[len(row) - 1 : len(row) - 1 + RESPONSE_LENGTH]
    np.testing.assert_allclose(np.asarray(ours[b]), expected, atol=1e-4, rtol=1e-4)


def _ours(checkpoint, prompts, tokens: SpecialTokens) -> list[list[int]]:
  out = sample(
    module_of(checkpoint.config),
    checkpoint.params,
    prompts.tokens,
    prompts.mask,
    jax.random.PRNGKey(0),
    max_length=RESPONSE_LENGTH,
    temperature=0.0,
    tokens=tokens,
  )
  ids, mask = np.asarray(out.tokens), np.asarray(out.mask, bool)
  assert (ids[~mask] == tokens.pad_id).all()
  return [ids[b][mask[b]].tolist() for b in range(len(ids))]


def _theirs(model, rows, tokens: SpecialTokens) -> list[list[int]]:
  """`generate`'s greedy responses to each unpadded row, up to its first stop id."""
  import torch

  responses = []
  for row in rows:
    with torch.no_grad():
      new = model.generate(
        torch.tensor([row]),
        attention_mask=torch.ones(1, len(row), dtype=torch.long),
        max_new_tokens=RESPONSE_LENGTH,
        do_sample=False,
        eos_token_id=list(tokens.stop_ids),
        pad_token_id=tokens.pad_id,
      )[0, len(row) :].tolist()
    ends = [i + 1 for i, t in enumerate(new) if t in tokens.stop_ids]
    responses.append(new[: ends[0]] if ends else new)
  return responses


def test_greedy_responses_equal_transformers_generate(qwen):
  artifacts, checkpoint, rows, prompts = qwen
  tokens = checkpoint.special_tokens
  ours = _ours(checkpoint, prompts, tokens)
  assert ours == _theirs(artifacts.model, rows, tokens)
  # A second stop id that the greedy responses emit (the EOS stays first): both stop on it.
  first = ours[0]
  at = next(i for i in range(1, len(first)) if first[i] not in first[:i])
  stopping = SpecialTokens(tokens.pad_id, (tokens.stop_ids[0], first[at]))
  ours = _ours(checkpoint, prompts, stopping)
  assert ours == _theirs(artifacts.model, rows, stopping)
  assert ours[0] == first[: at + 1]
