"""Grammars by extension, offline, and the problems an edit adds."""

import pytest

from tools.syntax import _GRAMMARS, added_problems, language_for, language_name, syntax_problems

VALID = {
    ".py": "x = 1\n", ".js": "let x = 1;\n", ".ts": "let x: number = 1;\n", ".tsx": "const a = <b />;\n",
    ".go": "package main\n", ".rs": "fn main() {}\n", ".java": "class A {}\n", ".c": "int x;\n",
    ".cpp": "int x;\n", ".json": '{"a": 1}\n', ".yaml": "a: 1\n", ".toml": "a = 1\n", ".sh": "echo hi\n",
    ".css": "a { color: red; }\n", ".html": "<p>hi</p>\n",
}


@pytest.mark.parametrize("extension", sorted(set(_GRAMMARS)))
def test_every_grammar_loads_offline_and_parses(extension):
    language = language_for(f"file{extension}")
    sample = VALID.get(extension) or VALID[{".pyi": ".py", ".mjs": ".js", ".cjs": ".js", ".jsx": ".js",
                                             ".mts": ".ts", ".cts": ".ts", ".h": ".c", ".cc": ".cpp",
                                             ".cxx": ".cpp", ".hh": ".cpp", ".hpp": ".cpp", ".hxx": ".cpp",
                                             ".yml": ".yaml", ".bash": ".sh", ".htm": ".html"}[extension]]
    assert syntax_problems(sample, language) == []
    assert language_name(language)


def test_unknown_extensions_have_no_grammar_and_names_map_to_grammars():
    assert language_for("notes.xyz") is None and language_for("Makefile") is None
    assert language_for("rust") == ".rs" and language_for("SRC/Main.PY") == ".py"


def test_a_problem_names_line_column_enclosing_node_and_shows_an_excerpt():
    text = "def f():\n    return (\n"
    (problem,) = syntax_problems(text, ".py")
    assert (problem.line, problem.column) == (2, 12)
    described = problem.describe(text)
    assert "line 2, column 12" in described and "    2 |     return (" in described


def test_only_problems_the_edit_adds_count():
    before = "fn main() {\n    let x = ;\n}\n"
    after = "fn main() {\n    let x = ;\n    let y = 2;\n}\n"
    assert syntax_problems(before, ".rs")
    assert added_problems(syntax_problems(before, ".rs"), syntax_problems(after, ".rs")) == []
    broken = after.replace("let y = 2;", "let y = (2;")
    assert added_problems(syntax_problems(before, ".rs"), syntax_problems(broken, ".rs"))
