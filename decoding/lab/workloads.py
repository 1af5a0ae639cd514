"""Benchmark and test prompts built from real Python standard-library source.

The embedded 270M is a base model: it does not follow edit instructions, but it keeps copying when the answer is
seeded with the first lines of the source it should re-emit. The prompts lean on that so outputs stay meaningful.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Workload:
    name: str
    prompt: str
    prediction: str | None = None  # source text handed to the drafters, as in OpenAI Predicted Outputs


def _source(module_name: str) -> str:
    return inspect.getsource(__import__(module_name))


def copy_edit(module_name: str, change: str, seed_lines: int = 4) -> Workload:
    """A whole stdlib file, then the model re-emitting it with `change`, seeded with its first lines."""
    src = _source(module_name)
    seed = "".join(src.splitlines(keepends=True)[:seed_lines])
    prompt = f"File {module_name}.py:\n```python\n{src}```\n\nThe same file, {change}:\n```python\n{seed}"
    return Workload(f"copy-edit:{module_name}", prompt, prediction=src)


def ot_edit(module_name: str = "bisect") -> Workload:
    """An OT edit script over a stdlib file, continued after a few ops that quote the source."""
    lines = _source(module_name).splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if line.startswith("def "))
    script = [f"retain({json.dumps(line)})" for line in lines[:target]]
    script += [f"delete({json.dumps(lines[target])})", f"insert({json.dumps(lines[target].replace('hi=', 'high='))})"]
    body = "".join(lines)
    prompt = (
        f"Source of {module_name}.py:\n```python\n{body}```\n\n"
        "Edit script renaming `hi` to `high`, one op per source line (retain/delete quote the text they cover):\n"
        "[\n" + ",\n".join(script) + ',\nretain("'
    )
    return Workload(f"ot-edit:{module_name}", prompt, prediction=body)


def code_continuation(module_name: str = "textwrap", lines: int = 120) -> Workload:
    """The first `lines` lines of a stdlib file the MTP head never trained on, continued: nothing to copy from.

    The module must be among `decoding.lab.train_mtp.HELD_OUT_MODULES` (a test checks it).
    """
    head = "".join(_source(module_name).splitlines(keepends=True)[:lines])
    return Workload(f"code-continuation:{module_name}", f"File {module_name}.py:\n```python\n{head}")


def free_text() -> Workload:
    """Open-ended prose: nothing to copy, so drafting must not slow it down.

    Under greedy decoding the 270M base model soon repeats its own sentences, which n-gram drafting then exploits;
    this prompt is the least repetitive of those tried.
    """
    return Workload("free-text", "The history of the printing press begins in")


class PrefixTooLong(ValueError):
    """The file the shared prefix is cut from has fewer tokens than asked for; the message says how many it has."""


def shared_prefix_prompts(tokenizer, tokens: int = 2000, module_name: str = "textwrap") -> tuple[str, str]:
    """Two prompts sharing a real file's first lines of at least `tokens` tokens, then different questions: a
    prefix cache's work (every agent turn re-sends the files it read)."""
    text = ""
    for line in _source(module_name).splitlines(keepends=True):
        text += line
        if len(tokenizer(text).input_ids) >= tokens:
            prefix = f"File {module_name}.py:\n```python\n{text}```\n\n"
            return prefix + "Summarize the file above.", prefix + "Which function is the longest?"
    raise PrefixTooLong(f"{module_name}.py has {len(tokenizer(text).input_ids)} tokens, fewer than {tokens}")


def standard_workloads() -> list[Workload]:
    return [
        copy_edit("bisect", "with the parameter `hi` renamed to `high`"),
        copy_edit("colorsys", "with the helper `_v` renamed to `_hue_to_value`"),
        ot_edit("bisect"),
        code_continuation("textwrap"),
        free_text(),
    ]
