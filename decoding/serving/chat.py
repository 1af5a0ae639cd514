"""Gemma's chat format, in one place: the Jinja template vLLM is given, and the prompt our server renders with it.

The embedded model is a base model and ships no chat template, so Retain writes Gemma's turn format itself. The
template is the single definition; `gemma_chat_prompt` checks the messages and renders that same template, so
both engines see the same prompt for the same messages.
"""

from __future__ import annotations

from functools import cache

END_OF_TURN = "<end_of_turn>"

# Gemma's turns; system messages fold into the next user turn, as Gemma's own template does
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system=[]) %}"
    "{% for m in messages %}"
    "{% set text = m['content'] if m['content'] is string "
    "else ((m['content'] or []) | map(attribute='text') | join('')) %}"
    "{% if m['role'] in ['system', 'developer'] %}{% set ns.system = ns.system + [text] %}"
    "{% elif m['role'] == 'user' %}"
    "<start_of_turn>user\n{{ (ns.system + [text]) | join('\n\n') }}<end_of_turn>\n{% set ns.system = [] %}"
    "{% elif m['role'] == 'assistant' %}<start_of_turn>model\n{{ text }}<end_of_turn>\n"
    "{% endif %}{% endfor %}"
    "{% if ns.system %}<start_of_turn>user\n{{ ns.system | join('\n\n') }}<end_of_turn>\n{% endif %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
ROLES = ("system", "developer", "user", "assistant")


class MessageError(ValueError):
    """Messages that cannot be written as a Gemma prompt; `param` names the offending field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def text_content(content, param: str) -> str:
    """A message/prediction content: a string or a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    parts = isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content)
    if parts and all(isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise MessageError(f"{param} must be a string or a list of text parts", param)


@cache
def _template():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(CHAT_TEMPLATE)


def gemma_chat_prompt(messages) -> str:
    """The prompt (without `<bos>`) for OpenAI-style chat messages, ending where the model's turn begins."""
    if not isinstance(messages, list) or not messages:
        raise MessageError("messages must be a non-empty list", "messages")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise MessageError(f"messages[{i}] must be an object with a role", f"messages[{i}]")
        if message["role"] not in ROLES:
            raise MessageError(f"messages[{i}].role {message['role']!r} is not supported", f"messages[{i}].role")
        text = text_content(message.get("content", ""), f"messages[{i}].content")
        checked.append({"role": message["role"], "content": text})
    return _template().render(messages=checked, bos_token="", add_generation_prompt=True)


def stop_token_ids(tokenizer) -> frozenset[int]:
    """The tokens that end a Gemma turn or text: `<eos>`, `<end_of_turn>` and the tokenizer's own EOS (looked up
    by name: the whole vocabulary as a dict costs a quarter of a second, once per grounded request in vLLM)."""
    ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<eos>", END_OF_TURN)} - {None, tokenizer.unk_token_id}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)
