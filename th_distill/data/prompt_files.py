"""The user's prompts from a JSONL file (`task.source = 'prompt_file'`), split into disjoint pools.

Each non-empty line of `task.prompt_file` is a JSON object whose `task.prompt_field` holds the
text (a line that is not, is refused naming the line). A prompt is that text through
`task.prompt_template` (`'Summarize: {text}'`; none: the text as it is), then, with
`task.chat_template`, the tokenizer's chat template as one user message with the generation
prompt (`th_distill.data.chat_template`, as `transformers`' `apply_chat_template(...,
add_generation_prompt=True)`; tokenized without adding special tokens, as `transformers` does),
tokenized with the task's vocabulary (`task.vocabulary`).

Trimming: a prompt longer than `task.prompt_length` tokens keeps its template and chat markup and
loses the END of its text (the longest start of the text that fits, in characters): the
instruction of a template and the generation prompt that ends a chat prompt stay where the model
expects them, and a long document is cut at its end, as seqio trims inputs. How many were
trimmed is logged. A template that alone does not fit is refused.

Pools: texts are deduplicated (equal texts, then equal token rows after trimming), ordered by the
SHA-256 of their text, and cut into oracle, distill and eval pools in that order. The pools depend
neither on the file's order nor on `config.seed`, and are disjoint; a file with fewer distinct
prompts than the pools need is refused in config validation with the counts (`shortage`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import types
from typing import Any

from absl import logging

from th_distill.data import chat_template as chat_lib
from th_distill.data import vocabularies
from th_distill.data.batch import PromptSet

POOLS = ("oracle", "distill", "eval")
# The task fields the prompts depend on (the key of the cache of files read).
TASK_FIELDS = (
  "source",
  "vocab_size",
  "vocabulary",
  "prompt_file",
  "prompt_field",
  "prompt_template",
  "chat_template",
  "prompt_length",
)


@dataclasses.dataclass(frozen=True)
class PromptFile:
  """The distinct prompts of a file in hash order (`prompts` [N, prompt_length], right-padded
  with the pad id, `mask` True on real tokens), with what was read, dropped and trimmed."""

  prompts: PromptSet
  lines: int  # records read
  duplicates: int  # records dropped: the same text, or the same tokens after trimming
  trimmed: int  # distinct prompts whose text was cut to fit task.prompt_length


def read_texts(path: str, field: str) -> list[str]:
  """The `field` string of every non-empty line of the JSONL file `path`; ValueError naming the
  line that is not a JSON object with that string field, FileNotFoundError for no file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"task.prompt_file: no file at {path!r}")
  texts = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"task.prompt_file: line {number} of {path} is not JSON ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise ValueError(
          f"task.prompt_field: line {number} of {path} has no string field {field!r}"
        )
      texts.append(record[field])
  return texts


class _Renderer:
  """text -> token ids of the whole prompt (template, chat template, tokenizer)."""

  def __init__(self, task: Any, vocabulary: vocabularies.Vocabulary):
    self.template, self.vocabulary = task.prompt_template, vocabulary
    self.chat = None
    if task.chat_template:
      template = getattr(vocabulary, "chat_template", None)
      if template is None:
        raise ValueError(
          f"task.chat_template: the tokenizer of task.vocabulary = {task.vocabulary!r} has no "
          "chat template (chat_template.jinja or tokenizer_config.json's chat_template)"
        )
      self.chat = functools.partial(chat_lib.render_prompt, template)

  def __call__(self, text: str) -> list[int]:
    text = self.template.format(text=text) if self.template else text
    if self.chat is None:
      return self.vocabulary.encode(text)
    rendered = self.chat(text, self.vocabulary.token_strings)
    return self.vocabulary.encode(rendered, add_special_tokens=False)


def _trim(text: str, render: _Renderer, length: int) -> list[int]:
  """The ids of the longest start of `text` whose prompt fits `length` tokens (exponential,
  then binary search over characters); ValueError if the template alone does not."""
  ids = render("")
  if len(ids) > length:
    raise ValueError(
      f"task.prompt_length: {length} tokens cannot hold the template and chat markup alone "
      f"({len(ids)} tokens); raise task.prompt_length or shorten task.prompt_template"
    )
  fits, over = 0, max(length, 1)
  while over < len(text) and len(render(text[:over])) <= length:
    fits, over = over, 2 * over
  over = min(over, len(text))
  while over - fits > 1:
    middle = (fits + over) // 2
    fits, over = (middle, over) if len(render(text[:middle])) <= length else (fits, middle)
  return render(text[:fits]) if fits else ids


def _hash(text: str) -> str:
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=2)
def _read(fields: tuple[tuple[str, Any], ...], size: int, mtime: float) -> PromptFile:
  del size, mtime  # in the cache key only: a changed file is read again
  task = types.SimpleNamespace(**dict(fields))
  vocabulary = vocabularies.task_vocabulary(task)
  texts = read_texts(task.prompt_file, task.prompt_field)
  render, length = _Renderer(task, vocabulary), task.prompt_length
  rows, seen, trimmed = [], set(), 0
  for text in sorted(set(texts), key=_hash):
    ids = render(text)
    if len(ids) > length:
      ids, trimmed = _trim(text, render, length), trimmed + 1
    if tuple(ids) not in seen:
      seen.add(tuple(ids))
      rows.append(ids)
  prompts = PromptSet.of_rows(rows, length, vocabulary.special_tokens.pad_id)
  return PromptFile(prompts, len(texts), len(texts) - len(rows), trimmed)


def read_prompt_file(task: Any) -> PromptFile:
  """The prompts of `task.prompt_file` (`task`: the task section, a `TaskSection` or
  `config.task`), read once per file version and task fields."""
  fields = tuple((name, getattr(task, name)) for name in TASK_FIELDS)
  stat = os.stat(task.prompt_file) if os.path.isfile(task.prompt_file) else None
  return _read(fields, stat.st_size if stat else -1, stat.st_mtime if stat else -1.0)


def shortage(task: Any, sizes: dict[str, int]) -> str | None:
  """Why the file cannot fill pools of `sizes` ({'oracle', 'distill', 'eval'}: counts), with the
  counts, or None if it can."""
  found, needed = read_prompt_file(task), sum(sizes[name] for name in POOLS)
  if len(found.prompts) >= needed:
    return None
  return (
    f"{task.prompt_file} holds {len(found.prompts)} distinct prompts ({found.lines} records, "
    f"{found.duplicates} duplicates), fewer than the {needed} the pools need (prompts.num_oracle "
    f"{sizes['oracle']} + num_distill {sizes['distill']} + num_eval {sizes['eval']})"
  )


def prompt_pools(task: Any, sizes: dict[str, int]) -> dict[str, PromptSet]:
  """Disjoint pools {'oracle', 'distill', 'eval'}: `PromptSet`s of `sizes[name]` prompts
  [size, task.prompt_length], consecutive in hash order; ValueError with the counts if the file
  holds too few. Logs what was read, dropped and trimmed."""
  problem = shortage(task, sizes)
  if problem:
    raise ValueError(f"task.prompt_file: {problem}")
  found = read_prompt_file(task)
  logging.info(
    "Prompts from %s: %d records, %d distinct (%d duplicates dropped); %d trimmed to "
    "task.prompt_length = %d tokens by cutting the end of their %r text (template and chat "
    "markup kept); pools %s by the SHA-256 of the text.",
    task.prompt_file,
    found.lines,
    len(found.prompts),
    found.duplicates,
    found.trimmed,
    task.prompt_length,
    task.prompt_field,
    ", ".join(f"{name} {sizes[name]}" for name in POOLS),
  )
  pools, start = {}, 0
  for name in POOLS:
    pools[name] = found.prompts[start : start + sizes[name]]
    start += sizes[name]
  return pools
