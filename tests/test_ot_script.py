"""The model-facing dialect and its streaming parser."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools.ot import Delete, Insert, Retain, format_script, ot_diff
from tools.ot_script import SCRIPT_LINE_PATTERN, ScriptParser, ScriptSyntaxError, parse_script


def test_all_forms_parse():
    script = (
        '[retain(8), delete("really"),\n'
        'insert("very\\nvery \\u00e9 \\"q\\" \\\\"), # a comment\n'
        'retain("x")\ndelete(2)]'
    )
    assert parse_script(script) == [
        Retain(8),
        Delete(6, "really"),
        Insert('very\nvery é "q" \\'),
        Retain(1, "x"),
        Delete(2),
    ]


def test_newlines_alone_separate_and_brackets_are_optional():
    assert parse_script("retain(1)\ninsert(\"a\")\n\n") == [Retain(1), Insert("a")]


@pytest.mark.parametrize(
    ('script', 'message'),
    [
        ("retain(5", "unfinished retain"),
        ("replace(3)", "unknown operation 'replace'"),
        ("insert(3)", "insert takes a quoted string"),
        ("retain(-1)", "must not be negative"),
        ("[retain(1)", "missing closing ']'"),
        ('insert("\\q")', "bad string literal"),
        ('insert("abc', "unfinished string literal"),
        ("retain 5", "expected '(' after retain"),
        ("retain(1)] x", "found ']'"),
        ("retain(\u09e9)", "retain expects a count or a JSON string"),  # a Bengali 3: counts are ASCII digits
        ('insert("\\u12G4")', "invalid escape '\\\\u12G4'"),
        ("retax(1)", "unknown operation 'retax'"),
    ],
)
def test_malformed_scripts_name_the_problem(script, message):
    with pytest.raises(ScriptSyntaxError, match=re.escape(message)):
        parse_script(script)


def test_errors_point_at_line_and_column():
    with pytest.raises(ScriptSyntaxError) as info:
        parse_script('retain(3)\n  delete("x")\n  bogus(1)')
    assert (info.value.line, info.value.column) == (3, 3)


def test_streaming_yields_each_op_when_complete_and_shows_partial_inserts():
    parser = ScriptParser()
    seen, partials = [], []
    for ch in 'retain(12)\ninsert("new\\tline")\ndelete("old")':
        seen += parser.feed(ch)
        if parser.partial_insert is not None:
            partials.append(parser.partial_insert)
    assert seen == [Retain(12), Insert("new\tline"), Delete(3, "old")]
    assert parser.close() == seen
    assert partials[-1] == "new\tline" and "new" in partials and "new\t" in partials


def test_a_count_is_complete_only_when_its_parenthesis_arrives():
    parser = ScriptParser()
    assert parser.feed("retain(1") == []
    assert parser.feed("2") == []
    assert parser.feed(")") == [Retain(12)]


texts = st.text(alphabet=st.sampled_from('ab"\\\n\t{}é😀 '), max_size=30)


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.lists(st.integers(1, 7), min_size=1, max_size=20))
def test_any_chunking_gives_the_same_ops(before, after, sizes):
    script = format_script(ot_diff(before, after))
    whole = parse_script(script)
    parser, pos, streamed = ScriptParser(), 0, []
    for size in sizes * (len(script) // sum(sizes) + 1):
        streamed += parser.feed(script[pos : pos + size])
        pos += size
    parser.close()
    assert streamed == whole == ot_diff(before, after)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from('retaindl()[]",\\\n #0123456789xu'), max_size=60))
def test_any_text_parses_or_raises_a_syntax_error(text):
    error = None
    try:
        parse_script(text)
    except ScriptSyntaxError as exc:
        error = exc
    assert error is None or (error.line >= 1 and error.column >= 1)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.text(alphabet='ab\n"\\é\t', max_size=30), st.text(alphabet='ab\n"\\é\t', max_size=30))
def test_the_script_pattern_matches_every_line_format_script_writes(before, after):
    pattern = re.compile(SCRIPT_LINE_PATTERN)
    for line in format_script(ot_diff(before, after)).splitlines():
        assert pattern.fullmatch(line), line
        assert parse_script(line)
