"""Tolerant application on real source files in several languages."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.ot import Delete, Insert, OTError, Retain, apply, ot_diff
from tools.ot_script import parse_script
from tools.patch import EditRefused, SyntaxRefused, apply_edit
from tools.syntax import language_for

PYTHON = '''import os


def load(path):
    with open(path) as handle:
        return handle.read()


def save(path, text):
    with open(path, "w") as handle:
        handle.write(text)
'''

JAVASCRIPT = """function add(a, b) {
  return a + b;
}

function scale(values, factor) {
  return values.map((v) => v * factor);
}

module.exports = { add, scale };
"""

GO = """package main

import "fmt"

func greet(name string) string {
\treturn fmt.Sprintf("hello %s", name)
}

func main() {
\tfmt.Println(greet("world"))
}
"""

RUST = """use std::collections::HashMap;

fn count(words: &[&str]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in words {
        *counts.entry(word.to_string()).or_insert(0) += 1;
    }
    counts
}
"""

FILES = {"python": ("a.py", PYTHON), "javascript": ("a.js", JAVASCRIPT), "go": ("a.go", GO), "rust": ("a.rs", RUST)}
EDITS = {
    "python": ("return handle.read()", "return handle.read().strip()"),
    "javascript": ("return a + b;", "return Number(a) + Number(b);"),
    "go": ('fmt.Sprintf("hello %s", name)', 'fmt.Sprintf("hi %s!", name)'),
    "rust": ("or_insert(0) += 1", "or_default() += 1"),
}


def _edit(name: str, script: str):
    path, text = FILES[name]
    return apply_edit(text, parse_script(script), language_for(path))


@pytest.mark.parametrize("name", sorted(FILES))
@pytest.mark.parametrize("delta", [-3, -1, 2, 3])
def test_a_quoted_delete_reanchors_a_miscounted_retain(name, delta):
    _path, text = FILES[name]
    old, new = EDITS[name]
    offset = text.index(old)
    script = f"retain({offset + delta})\ndelete({_json(old)})\ninsert({_json(new)})"
    result = _edit(name, script)
    assert result.after == text.replace(old, new)
    (correction,) = result.corrections
    assert (correction.op_index, correction.expected, correction.found) == (1, offset + delta, offset)
    assert correction.kind == "anchor" and f"({-delta:+d})" in correction.message.replace(f"offset {offset}, ", "(")


def _json(text: str) -> str:
    import json

    return json.dumps(text)


@pytest.mark.parametrize("name", sorted(FILES))
def test_exact_diffs_land_exactly_in_every_language(name):
    path, text = FILES[name]
    old, new = EDITS[name]
    after = text.replace(old, new)
    result = apply_edit(text, ot_diff(text, after), language_for(path))
    assert result.after == after and result.corrections == []


def test_a_slightly_misquoted_delete_is_matched_fuzzily_and_reported():
    offset = PYTHON.index("return handle.read()")
    result = _edit("python", f'retain({offset})\ndelete("return  handle.read()")\ninsert("return b")')
    assert "return b\n" in result.after and "handle.read()" not in result.after.split("def save")[0]
    assert result.corrections[0].kind == "fuzzy-anchor"


@pytest.mark.parametrize("name", ["python", "go"])
@pytest.mark.parametrize("delta", [1, 2, 3])
def test_a_whole_line_insert_lands_on_the_nearest_line_boundary(name, delta):
    _path, text = FILES[name]
    anchor = "def save" if name == "python" else "func main"
    line_start = text.index(anchor)
    new_line = "# saved below\n" if name == "python" else "// main below\n"
    result = _edit(name, f"retain({line_start + delta})\ninsert({_json(new_line)})")
    assert result.after == text[:line_start] + new_line + text[line_start:]
    assert result.corrections[0].kind == "line-boundary"


def test_a_line_insert_counted_into_blank_lines_stays_among_them():
    line_start = PYTHON.index("def save")
    result = _edit("python", f'retain({line_start - 1})\ninsert("# saved below\\n")')
    assert result.after == PYTHON[: line_start - 1] + "# saved below\n" + PYTHON[line_start - 1 :]


@pytest.mark.parametrize("delta", [-3, -2, -1, 1, 2, 3])
def test_ot_diff_anchors_a_line_insert_among_blank_lines_so_a_miscount_still_lands_where_meant(delta):
    """Among blank lines every offset a few code points off is a line boundary too, which the applier must take as
    meant: the dev set's silent wrong edits. `ot_diff` quotes the text before such an insert."""
    after = PYTHON.replace("def save", "# saved below\ndef save")
    ops = ot_diff(PYTHON, after)
    assert [type(op) for op in ops] == [Retain, Retain, Insert] and ops[1].text is not None
    miscounted = [Retain(ops[0].n + delta), *ops[1:]]
    assert apply_edit(PYTHON, miscounted, language_for("a.py")).after == after


def test_ot_diff_leaves_a_line_insert_between_long_lines_counted_only():
    after = PYTHON.replace("        handle.write(text)", "        handle.flush()\n        handle.write(text)")
    ops = ot_diff(PYTHON, after)
    assert [type(op) for op in ops] == [Retain, Insert] and ops[0].text is None


def test_a_line_insert_between_two_equally_good_boundaries_is_refused():
    # "}\n" is two code points: offset 1 is as near to the line before it as to the line after it, and an
    # unindented line fits before the "}" as well as after it
    closing = JAVASCRIPT.index("}\n\nfunction scale")
    with pytest.raises(EditRefused, match="ambiguous"):
        _edit("javascript", f'retain({closing + 1})\ninsert("a = 1;\\n")')


def test_indentation_decides_between_equally_near_boundaries():
    closing = JAVASCRIPT.index("}\n\nfunction scale")
    result = _edit("javascript", f'retain({closing + 1})\ninsert("  a = 1;\\n")')
    assert "  return a + b;\n  a = 1;\n}\n" in result.after


def test_an_insert_that_would_split_a_word_and_break_syntax_moves_to_the_word_end():
    offset = PYTHON.index("path) as handle:") + 2  # inside "path"
    result = _edit("python", f'retain({offset})\ninsert(", \\"rb\\"")')
    assert 'with open(path, "rb") as handle:' in result.after
    assert result.corrections[0].kind == "word-boundary"


def test_an_insert_inside_a_word_that_parses_is_left_where_the_counts_put_it():
    offset = PYTHON.index("handle.read") + 3  # han|dle: a rename, valid syntax
    result = _edit("python", f'retain({offset})\ninsert("XX")')
    assert "hanXXdle.read" in result.after and result.corrections == []


@pytest.mark.parametrize("name", sorted(FILES))
def test_an_edit_that_breaks_syntax_is_refused_with_location_and_excerpt(name):
    _path, text = FILES[name]
    old, _ = EDITS[name]
    offset = text.index(old)
    with pytest.raises(SyntaxRefused) as info:
        _edit(name, f"retain({offset})\ninsert(\"((((\")")
    message = str(info.value)
    assert "line" in message and "column" in message and "inside" in message and " | " in message
    assert info.value.problems


def test_allow_broken_applies_anyway_and_says_so():
    result = apply_edit(PYTHON, [Retain(5), Insert("((")], language_for("a.py"), allow_broken=True)
    assert result.after.startswith("impor((t") and "syntax error" in result.notes[0]


def test_quoted_text_twice_and_equally_near_is_refused():
    # the counts say 4; "," stands at 2 and at 6, equally near, and the two results differ
    with pytest.raises(EditRefused, match="ambiguous"):
        apply_edit("ab,cde,f\n", [Retain(4), Delete(1, ","), Insert(";")], None)


def test_of_two_matches_the_nearer_one_wins():
    # the counts say 7; "," stands at 6 (one away) and at 9 (two away)
    assert apply_edit("a = [x, y, z]\n", [Retain(7), Delete(1, ","), Insert(";")], None).after == "a = [x; y, z]\n"


def test_quoted_text_absent_is_refused_with_what_the_file_has():
    with pytest.raises(EditRefused, match="not in the file") as info:
        _edit("rust", 'retain(10)\ndelete("no such text")')
    assert "the file has" in str(info.value)


def test_a_delete_past_the_end_is_refused():
    with pytest.raises(EditRefused, match="past the end"):
        _edit("go", f"retain({len(GO) - 2})\ndelete(10)")


def test_an_insert_past_the_end_is_refused():
    with pytest.raises(EditRefused, match="past the end"):
        _edit("go", f'retain({len(GO) + 50})\ninsert("x")')


def test_an_unknown_language_is_applied_without_the_check_and_says_so():
    result = apply_edit("some notes\n", [Retain(5), Insert("((")], language_for("notes.xyz"))
    assert result.after == "some ((notes\n" and "without a syntax check" in result.notes[0]


def test_the_resolved_ops_are_exact_and_self_checking():
    offset = RUST.index("counts\n}")
    result = _edit("rust", f'retain({offset + 2})\ndelete("counts")\ninsert("counts.clone()")')
    assert apply(RUST, result.ops) == result.after
    assert all(op.text is not None for op in result.ops if isinstance(op, Delete))


_op = st.one_of(
    st.builds(Retain, st.integers(0, 30)),
    st.builds(lambda t: Retain(len(t), t), st.text(alphabet="ab (\n:", min_size=1, max_size=6)),
    st.builds(Delete, st.integers(0, 8)),
    st.builds(lambda t: Delete(len(t), t), st.text(alphabet="ab (\n:", min_size=1, max_size=6)),
    st.builds(Insert, st.text(alphabet="ab (\n:x", min_size=1, max_size=6)),
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab (\n:", max_size=60), st.lists(_op, max_size=8), st.sampled_from([None, ".py"]))
def test_any_script_lands_exactly_as_resolved_or_is_refused(doc, script, language):
    try:
        result = apply_edit(doc, script, language)
    except OTError:
        return
    assert apply(doc, result.ops) == result.after


def test_an_insert_after_a_quoted_delete_replaces_it_even_when_another_change_follows():
    doc = "a = 1\nb = 2\nc = 3\nd = 4\ne = 5\nf = 6\n"
    script = 'delete("b = 2\\n")\ninsert("b = 22\\n")\ndelete("e = 5\\n")\ninsert("e = 55\\n")'
    assert apply_edit(doc, parse_script(script), None).after == doc.replace("2\n", "22\n").replace("5\n", "55\n")


def test_quotes_repeated_alone_are_placed_by_the_run_they_start():
    # "x:\n" and the return line each occur twice after the cursor; together they occur once, in b()
    doc = (f"# {'-' * 60}\ndef a(x):\n    for y in x:\n        print(y)\n    if x is None:\n        return None\n\n\n"
           "def b(x):\n    if not x:\n        return None\n    return 2\n")
    script = 'retain("x:\\n")\ndelete("        return None\\n")\ninsert("        return 0\\n")'
    after = apply_edit(doc, parse_script(script), language_for("a.py")).after
    assert after == doc.replace("not x:\n        return None", "not x:\n        return 0")
