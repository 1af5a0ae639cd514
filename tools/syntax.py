"""Tree-sitter parsing by file extension, and the syntax errors an edit would add.

Grammars come from the official per-language wheels, which bundle the compiled grammar, so parsing
works offline. A file whose extension has no grammar is edited without the syntax check.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# extension -> (module, function returning the language pointer)
_GRAMMARS: dict[str, tuple[str, str]] = {
    ".py": ("tree_sitter_python", "language"),
    ".pyi": ("tree_sitter_python", "language"),
    ".js": ("tree_sitter_javascript", "language"),
    ".mjs": ("tree_sitter_javascript", "language"),
    ".cjs": ("tree_sitter_javascript", "language"),
    ".jsx": ("tree_sitter_javascript", "language"),
    ".ts": ("tree_sitter_typescript", "language_typescript"),
    ".mts": ("tree_sitter_typescript", "language_typescript"),
    ".cts": ("tree_sitter_typescript", "language_typescript"),
    ".tsx": ("tree_sitter_typescript", "language_tsx"),
    ".go": ("tree_sitter_go", "language"),
    ".rs": ("tree_sitter_rust", "language"),
    ".java": ("tree_sitter_java", "language"),
    ".c": ("tree_sitter_c", "language"),
    ".h": ("tree_sitter_c", "language"),
    ".cc": ("tree_sitter_cpp", "language"),
    ".cpp": ("tree_sitter_cpp", "language"),
    ".cxx": ("tree_sitter_cpp", "language"),
    ".hh": ("tree_sitter_cpp", "language"),
    ".hpp": ("tree_sitter_cpp", "language"),
    ".hxx": ("tree_sitter_cpp", "language"),
    ".json": ("tree_sitter_json", "language"),
    ".yaml": ("tree_sitter_yaml", "language"),
    ".yml": ("tree_sitter_yaml", "language"),
    ".toml": ("tree_sitter_toml", "language"),
    ".sh": ("tree_sitter_bash", "language"),
    ".bash": ("tree_sitter_bash", "language"),
    ".css": ("tree_sitter_css", "language"),
    ".html": ("tree_sitter_html", "language"),
    ".htm": ("tree_sitter_html", "language"),
}

# the names `language_for` accepts besides extensions (the evals' "language" field uses these)
_NAMED = {
    "python": ".py", "javascript": ".js", "typescript": ".ts", "tsx": ".tsx", "go": ".go", "rust": ".rs",
    "java": ".java", "c": ".c", "cpp": ".cpp", "json": ".json", "yaml": ".yaml", "toml": ".toml",
    "bash": ".sh", "css": ".css", "html": ".html",
}


def language_for(path_or_name: str | Path) -> str | None:
    """The grammar key for a path (by extension) or a language name; None when there is no grammar."""
    key = str(path_or_name)
    if key.lower() in _NAMED:
        return _NAMED[key.lower()]
    suffix = Path(key).suffix.lower()
    return suffix if suffix in _GRAMMARS else None


def language_name(language: str) -> str:
    """A readable name for a grammar key, e.g. ".rs" -> "rust"."""
    module, func = _GRAMMARS[language]
    name = module.removeprefix("tree_sitter_")
    return "tsx" if func == "language_tsx" else name


@cache
def _parser(language: str):
    from tree_sitter import Language, Parser

    module, func = _GRAMMARS[language]
    return Parser(Language(getattr(importlib.import_module(module), func)()))


@dataclass(frozen=True)
class SyntaxProblem:
    """An ERROR or MISSING node: where it is and what encloses it."""

    kind: str  # "ERROR" or "MISSING <node type>"
    line: int  # 1-based
    column: int  # 1-based, in code points
    enclosing: str  # type of the nearest named ancestor
    snippet: str  # the node's text, shortened

    def describe(self, text: str) -> str:
        lines = text.split("\n")
        first = max(self.line - 2, 0)
        excerpt = "\n".join(f"{n + 1:>5} | {lines[n]}" for n in range(first, min(self.line + 1, len(lines))))
        what = "syntax error" if self.kind == "ERROR" else f"missing {self.kind.removeprefix('MISSING ')}"
        return f"{what} at line {self.line}, column {self.column} (inside {self.enclosing}):\n{excerpt}"


def syntax_problems(text: str, language: str) -> list[SyntaxProblem]:
    """Every ERROR and MISSING node of `text`, in document order."""
    data = text.encode("utf-8")
    tree = _parser(language).parse(data)
    problems: list[SyntaxProblem] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if not node.has_error:
            continue
        if node.type == "ERROR" or node.is_missing:
            problems.append(_describe_node(node, data))
            if node.is_missing:
                continue
        stack.extend(reversed(node.children))
    return problems


def _describe_node(node, data: bytes) -> SyntaxProblem:
    where = node
    if node.type == "ERROR" and node.start_point[0] != node.end_point[0]:
        # an ERROR spanning lines starts where the parser lost track, not where the text is wrong:
        # point at its last token, where it gave up
        while where.child_count:
            where = where.children[-1]
    row, byte_col = where.start_point
    line_start = where.start_byte - byte_col
    column = len(data[line_start : where.start_byte].decode("utf-8", errors="replace")) + 1
    parent = node.parent
    while parent is not None and (not parent.is_named or parent.type == "ERROR"):
        parent = parent.parent
    enclosing = parent.type if parent is not None else "file"
    kind = f"MISSING {node.type}" if node.is_missing else "ERROR"
    snippet = data[node.start_byte : node.end_byte][:40].decode("utf-8", errors="replace")
    return SyntaxProblem(kind, row + 1, column, enclosing, snippet)


def added_problems(before: list[SyntaxProblem], after: list[SyntaxProblem]) -> list[SyntaxProblem]:
    """Problems of `after` that `before` did not have, matched by kind, enclosing node and text."""
    remaining = Counter((p.kind, p.enclosing, p.snippet) for p in before)
    added = []
    for problem in after:
        key = (problem.kind, problem.enclosing, problem.snippet)
        if remaining[key]:
            remaining[key] -= 1
        else:
            added.append(problem)
    return added
