"""Prompt files (`task.source = 'prompt_file'`): a JSONL file of texts, tokenized with a byte-level
BPE trained here (ids 0 and 1 are `!` and `"`), through a template and the chat template; the
pools are disjoint, independent of the file's order and of the seed, trimming keeps the template
and the generation prompt, and a file with too few prompts is refused in validation."""

import json
import logging
import random

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import hf_artifacts  # noqa: E402

from th_distill import config as config_lib  # noqa: E402
from th_distill.config.run_config import RunConfig  # noqa: E402
from th_distill.data import prompt_files  # noqa: E402
from th_distill.data.pools import prompt_pools  # noqa: E402
from th_distill.data.vocabularies import HuggingFaceVocabulary  # noqa: E402

WORDS = " ".join(hf_artifacts.CORPUS).split()
VOCAB = 336  # embedding rows: more than the tokenizer's 323 tokens
LENGTH = 40


def _texts(count: int, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + "!" for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tokenizer")
  hf_artifacts.write_tokenizer(directory)
  return str(directory)


def _config(micro, tokenizer_dir, path, **task):
  micro.task.update(
    {
      "source": "prompt_file",
      "vocabulary": tokenizer_dir,
      "prompt_file": str(path),
      "vocab_size": VOCAB,
      "prompt_length": LENGTH,
      **task,
    }
  )
  for name in ("oracle", "teacher", "student"):
    micro[name].model.vocab_size = VOCAB
  micro.prompts.update(num_oracle=20, num_distill=12, num_eval=8)
  return micro


def _rows(pool):
  return [tuple(t[m]) for t, m in zip(pool.tokens, pool.mask, strict=True)]


def test_pools_are_disjoint_and_independent_of_order_and_seed(micro, tokenizer_dir, tmp_path):
  texts = _texts(50)
  texts += texts[:5]  # duplicates are dropped
  path = hf_artifacts.write_prompt_file(tmp_path / "a.jsonl", texts, extra={"id": 1})
  config = _config(micro, tokenizer_dir, path, prompt_template="Summarize: {text}")
  pools = prompt_pools(config_lib.validate(config))
  vocab = HuggingFaceVocabulary(tokenizer_dir)
  assert {k: len(v) for k, v in pools.items()} == {"oracle": 20, "distill": 12, "eval": 8}
  rows = [row for pool in pools.values() for row in _rows(pool)]
  assert len(set(rows)) == len(rows) == 40, "distinct and disjoint"
  for pool in pools.values():
    assert pool.tokens.dtype == np.int32 and pool.mask.dtype == bool
    assert np.all(pool.tokens[~pool.mask] == vocab.special_tokens.pad_id)
    assert all(np.all(m[: m.sum()]) for m in pool.mask), "right-padded"
    for tokens, mask in zip(pool.tokens, pool.mask, strict=True):
      text = vocab.decode(tokens, mask)
      assert text.startswith("Summarize: ") and text[len("Summarize: ") :] in texts
      assert list(tokens[mask]) == vocab.encode(text)
  # Shuffled, in another file, under another seed: the same pools.
  random.Random(1).shuffle(texts)
  config.task.prompt_file = hf_artifacts.write_prompt_file(tmp_path / "b.jsonl", texts)
  config.seed = 7
  again = prompt_pools(RunConfig.from_config(config))
  for name, pool in pools.items():
    np.testing.assert_array_equal(again[name].tokens, pool.tokens)
    np.testing.assert_array_equal(again[name].mask, pool.mask)


def test_chat_prompts_equal_transformers_and_keep_their_end_when_trimmed(
  micro, tokenizer_dir, tmp_path, caplog
):
  long = " ".join(WORDS[:60])  # far longer than LENGTH tokens
  texts = [*_texts(44), long, '"Quoted!" ' + long]
  path = hf_artifacts.write_prompt_file(tmp_path / "p.jsonl", texts, field="prompt")
  config = _config(
    micro, tokenizer_dir, path, prompt_field="prompt", chat_template=True, prompt_length=2 * LENGTH
  )
  task = config_lib.validate(config).task
  found = prompt_files.read_prompt_file(task)
  assert (found.lines, found.duplicates, found.trimmed) == (46, 0, 2)
  with caplog.at_level(logging.INFO):
    prompt_pools(RunConfig.from_config(config))
  assert "2 trimmed to task.prompt_length = 80 tokens by cutting the end of their 'prompt'" in (
    caplog.text
  )
  reference = transformers.PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
  vocab = HuggingFaceVocabulary(tokenizer_dir)

  def chat_ids(text):
    message = [{"role": "user", "content": text}]
    ids = reference.apply_chat_template(message, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

  by_text = {tuple(chat_ids(t)): t for t in texts}
  rows = _rows(found.prompts)
  trimmed = [row for row in rows if row not in by_text]
  assert len(rows) - len(trimmed) == 44, "every untrimmed prompt is transformers' chat prompt"
  for row in trimmed:  # the end of the text is cut; the markup and generation prompt stay
    assert len(row) <= 2 * LENGTH
    text = vocab.decode(row, [True] * len(row))
    assert text.startswith("<|im_start|>user\n") and text.endswith(
      "<|im_end|>\n<|im_start|>assistant\n"
    )
    kept = text[len("<|im_start|>user\n") : -len("<|im_end|>\n<|im_start|>assistant\n")]
    assert any(t.startswith(kept) and len(kept) > 20 for t in texts[-2:])
    assert list(row) == chat_ids(kept)


def test_too_few_prompts_and_bad_records_are_refused_in_validation(micro, tokenizer_dir, tmp_path):
  texts = _texts(30)
  path = hf_artifacts.write_prompt_file(tmp_path / "few.jsonl", texts + texts[:4])
  config = _config(micro, tokenizer_dir, path)
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert (
    f"task.prompt_file: {path} holds 30 distinct prompts (34 records, 4 duplicates), fewer "
    "than the 40 the pools need (prompts.num_oracle 20 + num_distill 12 + num_eval 8)"
  ) in str(error.value)
  with open(path, "a") as f:
    f.write(json.dumps({"title": "no text"}) + "\n")
  with pytest.raises(config_lib.ConfigError, match=r"task.prompt_field: line 35 of .* no string"):
    config_lib.validate(config)
  config.task.update(prompt_template="Summarize: {document}", prompt_file="")
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.validate(config)
  assert "task.prompt_template: 'Summarize: {document}' must contain '{text}'" in str(error.value)
  assert "task.prompt_file: must be the path of a JSONL file" in str(error.value)
  path = hf_artifacts.write_prompt_file(tmp_path / "many.jsonl", _texts(60))
  config.task.update(prompt_template="{text}", prompt_file=path, prompt_length=4)
  config.task.chat_template = True
  with pytest.raises(config_lib.ConfigError, match=r"task.prompt_length: 4 tokens cannot hold"):
    config_lib.validate(config)
