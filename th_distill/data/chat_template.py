"""A checkpoint's chat template rendered as `transformers`' `apply_chat_template` renders it.

The same Jinja environment (sandboxed, `trim_blocks`, `lstrip_blocks`, the `loopcontrols`
extension; `raise_exception`, `strftime_now`, a `tojson` that does not escape HTML), the same
variables (`messages`, `tools=None`, `documents=None`, `add_generation_prompt`, and the tokenizer's
named special tokens: `bos_token`, `eos_token`, `pad_token`, ...). A prompt is one user message
with the generation prompt added (`add_generation_prompt=True`), so the model's response is the
assistant's turn. The `{% generation %}` tag of assistant masks is not supported (it only marks
assistant turns, which a prompt does not have).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping
from typing import Any


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
  return json.dumps(
    x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
  )


@functools.lru_cache(maxsize=4)
def _compiled(template: str):
  import jinja2
  import jinja2.ext
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  env = ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
  )
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  return env.from_string(template)


def render_prompt(template: str, text: str, token_strings: Mapping[str, Any]) -> str:
  """The chat `template` rendered for one user message `text`, generation prompt added, with the
  tokenizer's named special tokens `token_strings` ({'eos_token': '<|im_end|>', ...})."""
  return _compiled(template).render(
    messages=[{"role": "user", "content": text}],
    tools=None,
    documents=None,
    add_generation_prompt=True,
    **token_strings,
  )
