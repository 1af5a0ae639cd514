"""How a model asks for actions: native tool calls, or fenced blocks in plain text.

The text protocol works with any chat model, including servers without a tool parser:

    ```edit src/app.py          ```read src/app.py 10-40     ```shell        ```done
    retain("def total(")        ```                          pytest -q      what was done
    ...                                                      ```            ```
    ```

A block opens with three or more backticks followed by a tool name, and closes with the same fence. An edit's
block opens with its format's fence and a path (```edit PATH for an OT script, ```search-replace PATH,
```diff PATH; `tools.formats`): a block of another format's fence, or a bare ```diff, is ordinary markdown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

from tools.formats import OT, Format

FINISH_TOOLS = ("done", "failed")
TEXT_TOOLS = ("read", "create", "overwrite", "list", "search", "shell", *FINISH_TOOLS)
MAX_LINE_DIGITS = 18  # longer line numbers are no line of any file (and too long for int() past 4,300 digits)
_RANGE = re.compile(r"^(?P<path>.+?)(?:\s+(?P<start>\d+)(?:\s*-\s*(?P<end>\d+))?)?$")


@dataclass
class Action:
    tool: str  # a tool name, or "invalid" for a request that could not be understood
    args: dict
    call_id: str | None = None  # the native tool call this answers


@cache
def _opening(edit_fence: str) -> re.Pattern[str]:
    """A block's first line, with the edit format's fence standing for the edit tool."""
    tools = "|".join(re.escape(tool) for tool in (*TEXT_TOOLS, edit_fence))
    return re.compile(rf"^(?P<fence>`{{3,}})(?P<tool>{tools})(?![\w-])[ \t]*(?P<arg>[^\n]*)$", re.M)


def parse_actions(text: str, edit_format: Format = OT) -> list[Action]:
    """The fenced tool blocks in a reply, in order, an edit being a block of `edit_format`'s fence; an unclosed
    block becomes an "invalid" action."""
    actions, pos = [], 0
    while match := _opening(edit_format.fence).search(text, pos):
        fence, tool, arg = match["fence"], match["tool"], match["arg"].strip()
        if tool == edit_format.fence:
            tool = "edit"
        if arg.endswith(fence):  # a one-line block: ```read src/app.py```
            actions.append(_text_action(tool, arg[: -len(fence)].strip(), ""))
            pos = match.end()
            continue
        close = _closing(text, match.end(), fence, edit_format if tool == "edit" else None)
        if close is None:
            if _markdown(tool, arg, edit_format):
                pos = match.end()
                continue
            actions.append(Action("invalid", {"error": f"the {fence}{match['tool']} block is not closed with {fence}"}))
            break
        body = text[match.end() + 1 : close.start()]
        if not _markdown(tool, arg, edit_format):
            actions.append(_text_action(tool, arg, body))
        pos = close.end()
    return actions


def _closing(text: str, start: int, fence: str, edit_format: Format | None) -> re.Match[str] | None:
    """The fence line closing the block opened before `start`: the first, or for an edit the first one the format
    reads as the end of its block rather than as the file's text (`Format.fenced_text`), as grounding reads it."""
    reads_as_text = edit_format.fenced_text if edit_format is not None else None
    for close in re.compile(rf"^{fence}[ \t]*$", re.M).finditer(text, start):
        if reads_as_text is None or not reads_as_text(text[start : close.start()]):
            return close
    return None


def _markdown(tool: str, arg: str, edit_format: Format) -> bool:
    """A bare ```diff (no path) is markdown's diff block, not an edit of no file."""
    return tool == "edit" and not arg and edit_format.fence == "diff"


def _text_action(tool: str, arg: str, body: str) -> Action:
    if tool == "read":
        match = _RANGE.match(arg)
        if not match:
            return Action("invalid", {"error": "read needs a path: ```read PATH [START-END]```"})
        args: dict = {"path": match["path"]}
        if max(len(match["start"] or ""), len(match["end"] or "")) > MAX_LINE_DIGITS:
            return Action("invalid", {"error": "read: no file has line numbers that large; ```read PATH 1-200```"})
        if match["start"]:
            args["start_line"] = int(match["start"])
            args["end_line"] = int(match["end"]) if match["end"] else None
        return Action("read", args)
    if tool == "edit":
        return Action("edit", {"path": arg, "script": body})
    if tool in ("create", "overwrite"):
        return Action("create", {"path": arg, "content": body, "overwrite": tool == "overwrite"})
    if tool == "list":
        return Action("list", {"pattern": arg or "**/*"})
    if tool == "search":
        return Action("search", {"regex": body.strip("\n"), "glob": arg or "**/*"})
    if tool == "shell":
        return Action("shell", {"command": body or arg})
    return Action(tool, {"summary": (body or arg).strip()})


def action_from_call(call_id: str, name: str, arguments: str) -> Action:
    """A native tool call as an Action; arguments that are not a JSON object become an "invalid" action."""
    try:
        args = json.loads(arguments or "{}")
    except ValueError as exc:  # not JSON, or a number too long for Python to read
        return Action("invalid", {"error": f"the arguments of {name} are not valid JSON: {exc}"}, call_id)
    if not isinstance(args, dict):
        return Action("invalid", {"error": f"the arguments of {name} must be a JSON object"}, call_id)
    if name not in TOOL_SCHEMAS:
        return Action("invalid", {"error": f"there is no tool {name!r}; tools: {', '.join(TOOL_SCHEMAS)}"}, call_id)
    return Action(name, args, call_id)


def _schema(description: str, required: dict, optional: dict | None = None) -> dict:
    properties = {
        name: {"type": kind, "description": text} for name, (kind, text) in {**required, **(optional or {})}.items()
    }
    return {
        "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(required)},
    }


def tool_schemas(edit_format: Format = OT) -> dict[str, dict]:
    """The native tools, the `edit` tool's descriptions those of `edit_format` (its body in `script`)."""
    prompt = edit_format.prompt
    assert prompt is not None, f"{edit_format.name} is no format the agent offers"
    edit = _schema(
        prompt.tool_description,
        {"path": ("string", "path relative to the workspace"), "script": ("string", prompt.body_description)},
    )
    return {name: edit if name == "edit" else spec for name, spec in TOOL_SCHEMAS.items()}


TOOL_SCHEMAS = {
    "read": _schema(
        "Read a text file exactly as edit scripts count it (code points, no line numbers added).",
        {"path": ("string", "path relative to the workspace")},
        {"start_line": ("integer", "first line (1-based)"), "end_line": ("integer", "last line")},
    ),
    "edit": _schema(
        "Edit a file with an edit script (retain/delete/insert operations).",
        {"path": ("string", "path relative to the workspace"), "script": ("string", "the edit script")},
    ),
    "create": _schema(
        "Create a new file with this content.",
        {"path": ("string", "path relative to the workspace"), "content": ("string", "the whole file")},
        {"overwrite": ("boolean", "replace an existing file whole")},
    ),
    "list": _schema("List paths matching a glob.", {}, {"pattern": ("string", "glob, default **/*")}),
    "search": _schema(
        "Search text files for a Python regular expression.",
        {"regex": ("string", "the pattern")},
        {"glob": ("string", "which files, default **/*")},
    ),
    "shell": _schema("Run a shell command in the workspace root.", {"command": ("string", "bash command line")}),
    "done": _schema("The task is complete.", {"summary": ("string", "what was done")}),
    "failed": _schema("Give up: the task cannot be completed.", {"summary": ("string", "why")}),
}


def tool_specs(edit_format: Format = OT) -> list[dict]:
    """The tools in the OpenAI function-calling shape, editing in `edit_format`."""
    schemas = tool_schemas(edit_format)
    return [{"type": "function", "function": {"name": name, **spec}} for name, spec in schemas.items()]
