"""Edit formats: minimal references that apply back exactly, each format's applier, model-like perturbations, and
the registry they are all in."""

import json
from difflib import SequenceMatcher

import pytest

from evals.cases import DEFAULT_CASES, load_cases, load_suite
from tools.formats import Format, FormatError, Pairing, format_names, get_format, register, unregister
from tools.formats.lines import minimal_blocks
from tools.syntax import language_for
from tools.text_files import text_lines

SUITE = load_suite()


def reference_output(fmt: str, before: str, after: str) -> str:
    return get_format(fmt).reference(before, after)


def apply_output(fmt: str, before: str, output: str, language: str | None) -> str:
    return get_format(fmt).apply(before, output, language)


def perturbations(fmt: str, output: str, seed: str, trials: int = 3) -> list[tuple[str, str]]:
    perturb = get_format(fmt).perturb
    return perturb(output, seed, trials) if perturb else []


def _applies(fmt, case, output):
    try:
        return apply_output(fmt, case["before"], output, language_for(case["path"])) == case["after"]
    except FormatError:
        return False


@pytest.mark.parametrize("fmt", format_names())
def test_every_reference_applies_back_exactly_on_the_suite(fmt):
    failed = [c["id"] for c in SUITE if not _applies(fmt, c, reference_output(fmt, c["before"], c["after"]))]
    assert failed == []


def test_references_apply_back_on_the_real_commits():
    cases = load_cases(DEFAULT_CASES)
    for fmt in ("whole", "search-replace", "udiff", "ot", "ot-lines"):
        failed = [c["id"] for c in cases if not _applies(fmt, c, reference_output(fmt, c["before"], c["after"]))]
        assert failed == [], fmt
    # count-only scripts carry no text to check: the tolerant applier's line-boundary snapping can move an
    # insert that the counts put mid-line, which is why `ot` quotes context there
    counts_only = sum(_applies("ot-counts", c, reference_output("ot-counts", c["before"], c["after"])) for c in cases)
    assert counts_only / len(cases) >= 0.97


# ---- minimal blocks ----------------------------------------------------------------------------------------------

BEFORE = "def a():\n    return 1\n\n\ndef b():\n    return 1\n\n\ndef c():\n    return 3\n"


def test_a_unique_changed_line_needs_no_context():
    after = BEFORE.replace("return 3", "return 30")
    assert reference_output("search-replace", BEFORE, after) == (
        "<<<<<<< SEARCH\n    return 3\n=======\n    return 30\n>>>>>>> REPLACE\n"
    )
    assert reference_output("udiff", BEFORE, after) == "@@ ... @@\n-    return 3\n+    return 30\n"


def test_a_repeated_line_gets_the_context_that_makes_it_unique():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    (block,) = minimal_blocks(BEFORE, after)
    assert block.lines == [(" ", "def b():\n"), ("-", "    return 1\n"), ("+", "    return 2\n")]


def test_an_insertion_is_anchored_on_a_non_blank_line():
    after = BEFORE.replace("\n\ndef c", "\n\nX = 1\n\n\ndef c")
    (block,) = minimal_blocks(BEFORE, after)
    assert any(sign == " " and line.strip() for sign, line in block.lines)
    assert _applies("search-replace", {"before": BEFORE, "after": after, "path": "m.py"},
                    reference_output("search-replace", BEFORE, after))


def test_changes_whose_context_would_overlap_become_one_block():
    before = "b = 2\nc = 3\nb = 2\nc = 3\nb = 2\n"
    after = "b = 2\nX = 0\nb = 2\nY = 0\nb = 2\n"
    (block,) = minimal_blocks(before, after)  # the first change is unique only with the second in its context
    assert block.lines == [("-", "c = 3\n"), ("+", "X = 0\n"), (" ", "b = 2\n"), ("-", "c = 3\n"), ("+", "Y = 0\n")]
    far = BEFORE.replace("def a():\n    return 1", "def a():\n    return 10").replace("return 3", "return 30")
    assert len(minimal_blocks(BEFORE, far)) == 2


def test_a_file_without_a_final_newline_keeps_it_that_way():
    before, after = BEFORE.rstrip("\n"), BEFORE.rstrip("\n").replace("return 3", "return 4")
    for fmt in format_names():
        assert apply_output(fmt, before, reference_output(fmt, before, after), ".py") == after, fmt


# ---- appliers ----------------------------------------------------------------------------------------------------


def test_search_replace_takes_the_first_match_of_an_ambiguous_search_like_aider():
    doc = "if a {\n  x()\n}\nif b {\n  y()\n}\n"
    block = "<<<<<<< SEARCH\n}\n=======\n}\n// done\n>>>>>>> REPLACE\n"
    assert apply_output("search-replace", doc, block, None) == "if a {\n  x()\n}\n// done\nif b {\n  y()\n}\n"


def test_blocks_written_at_another_indentation_land_with_the_file_indentation():
    doc = "class A:\n    def f(self):\n        return 1\n"
    block = "<<<<<<< SEARCH\ndef f(self):\n    return 1\n=======\ndef f(self):\n    return 2\n>>>>>>> REPLACE\n"
    assert apply_output("search-replace", doc, block, None) == "class A:\n    def f(self):\n        return 2\n"
    hunk = "@@ ... @@\n def f(self):\n-    return 1\n+    return 2\n"
    assert apply_output("udiff", doc, hunk, None) == "class A:\n    def f(self):\n        return 2\n"


def test_udiff_reads_an_unsigned_blank_line_as_context():
    doc = "a = 1\n\nb = 2\n"
    assert apply_output("udiff", doc, "@@ ... @@\n a = 1\n\n-b = 2\n+b = 3\n", None) == "a = 1\n\nb = 3\n"


def test_outputs_that_cannot_apply_raise_format_errors():
    with pytest.raises(FormatError, match="not in the file"):
        apply_output("search-replace", "a\n", "<<<<<<< SEARCH\nzzz\n=======\ny\n>>>>>>> REPLACE\n", None)
    with pytest.raises(FormatError, match="no '======='"):
        apply_output("search-replace", "a\n", "<<<<<<< SEARCH\na\n>>>>>>> REPLACE\n", None)
    with pytest.raises(FormatError):
        apply_output("ot", "a\n", 'delete("nothing like this")', ".py")
    with pytest.raises(ValueError, match="unknown edit format 'xml'; known: whole, search-replace"):
        get_format("xml")


# ---- perturbations -----------------------------------------------------------------------------------------------


def test_whole_files_have_nothing_to_perturb():
    assert get_format("whole").perturb is None


def test_trimmed_whitespace_is_recovered_for_uniformly_indented_blocks():
    before = "class A:\n    def f(self):\n        return 1\n\n    def g(self):\n        return 1\n"
    after = before.replace("def g(self):\n        return 1", "def g(self):\n        return 2")
    case = {"before": before, "after": after, "path": "m.py"}
    for fmt in ("search-replace", "udiff"):
        kinds = dict(perturbations(fmt, reference_output(fmt, before, after), seed="x"))
        assert kinds["trimmed-whitespace"] != reference_output(fmt, before, after)
        assert _applies(fmt, case, kinds["trimmed-whitespace"]), fmt


def test_missing_context_misplaces_a_block_whose_context_was_needed():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    case = {"before": BEFORE, "after": after, "path": "m.py"}
    for fmt in ("search-replace", "udiff"):
        kinds = dict(perturbations(fmt, reference_output(fmt, BEFORE, after), seed="x"))
        shortened = kinds["missing-context"]
        assert "def b" not in shortened
        assert apply_output(fmt, BEFORE, shortened, None) == BEFORE.replace("return 1", "return 2", 1)
        assert not _applies(fmt, case, shortened)


def test_miscounted_retains_land_when_the_script_quotes_what_it_deletes():
    before = "alpha = compute(1)\nbeta = compute(2)\ngamma = compute(3)\n"
    after = before.replace("compute(2)", "measure(2)")
    case = {"before": before, "after": after, "path": "m.py"}
    quoted = perturbations("ot", reference_output("ot", before, after), seed="x", trials=3)
    counts = perturbations("ot-counts", reference_output("ot-counts", before, after), seed="x", trials=3)
    assert quoted and all(kind == "miscount before quoted text" for kind, _ in quoted)
    assert counts and all(kind == "miscount before inline insert" for kind, _ in counts)
    assert all(_applies("ot", case, text) for _, text in quoted)
    assert not any(_applies("ot-counts", case, text) for _, text in counts)


def test_perturbations_are_reproducible_from_their_seed():
    case = SUITE[0]
    output = reference_output("ot", case["before"], case["after"])
    assert perturbations("ot", output, seed="s1", trials=3) == perturbations("ot", output, seed="s1", trials=3)


@pytest.mark.parametrize("fmt", ["search-replace", "udiff"])
def test_line_formats_split_lines_at_newlines_only(fmt):
    before = 'page = 1\n\x0c\ns = "a\u2028b"\nend = 2\n'
    after = before.replace('"a\u2028b"', '"A\u2028b"')
    assert apply_output(fmt, before, reference_output(fmt, before, after), "python") == after


# ---- line-granular OT -----------------------------------------------------------------------------------------


def test_line_scripts_quote_whole_lines_and_no_counts():
    after = BEFORE.replace("return 3", "return 30")
    assert reference_output("ot-lines", BEFORE, after) == 'delete("    return 3\\n")\ninsert("    return 30\\n")'


def test_a_repeated_line_is_anchored_by_the_end_of_the_line_before_it():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    script = reference_output("ot-lines", BEFORE, after)
    assert script.startswith('retain("b():\\n")\ndelete("    return 1\\n")')
    assert apply_output("ot-lines", BEFORE, script, language_for("m.py")) == after


def test_line_scripts_place_several_changes_and_insertions():
    after = BEFORE.replace("def a():\n", "def a():\n    x = 0\n").replace("return 1\n\n\ndef c", "return 2\n\n\ndef c")
    after += "\n\ndef d():\n    return 4\n"
    script = reference_output("ot-lines", BEFORE, after)
    assert not any(op.rstrip(")").split("(")[1].isdigit() for op in script.splitlines())
    assert apply_output("ot-lines", BEFORE, script, language_for("m.py")) == after


def test_a_line_script_without_a_needed_retain_does_not_land():
    after = BEFORE.replace("def b():\n    return 1", "def b():\n    return 2")
    case = {"before": BEFORE, "after": after, "path": "m.py"}
    ((kind, perturbed),) = perturbations("ot-lines", reference_output("ot-lines", BEFORE, after), seed="x")
    assert kind == "no retain before a delete"
    assert not _applies("ot-lines", case, perturbed)


# ---- the registry ------------------------------------------------------------------------------------------------


def test_the_built_in_formats_are_registered_once_in_the_order_the_evals_report_them():
    assert format_names() == ("whole", "search-replace", "udiff", "ot", "ot-counts", "ot-lines")
    assert [get_format(name).fence for name in format_names()] == [
        "overwrite", "search-replace", "diff", "edit", "edit", "edit"]
    with pytest.raises(ValueError, match="registered twice"):
        register(get_format("ot"))


def test_an_alternative_needs_its_baseline_pairing_and_only_an_alternative_has_one():
    whole = get_format("whole")
    with pytest.raises(ValueError, match="baseline pairing"):
        Format("x", "x", "", whole.reference, whole.apply, role="alternative")
    with pytest.raises(ValueError, match="baseline pairing"):
        Format("x", "x", "", whole.reference, whole.apply, baseline=Pairing("ngram", "someone"))


# ---- a format added through the registry alone -------------------------------------------------------------------


def _numbered_lines(before: str, after: str) -> str:
    """`N: "text"` per changed line: line N of the file becomes the JSON string (several lines, or none)."""
    old, new = text_lines(before), text_lines(after)
    replaced: list[tuple[int, str]] = []
    for tag, i1, i2, j1, j2 in SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        text = "".join(new[j1:j2])
        if tag == "insert":  # folded into the line it goes before, or after the last one
            replaced.append((i1, text + old[i1]) if i1 < len(old) else (i1 - 1, old[i1 - 1] + text))
        elif tag != "equal":
            replaced += [(i1, text), *((i, "") for i in range(i1 + 1, i2))]
    return "".join(f"{i + 1}: {json.dumps(text)}\n" for i, text in replaced)


def _apply_numbered_lines(before: str, output: str, language: str | None) -> str:
    lines = text_lines(before)
    for row in text_lines(output):
        number, _, text = row.partition(": ")
        if not number.isdigit() or not 1 <= int(number) <= len(lines):
            raise FormatError(f"no line {number!r} in a file of {len(lines)} lines")
        lines[int(number) - 1] = json.loads(text)
    return "".join(lines)


def _off_by_one(output: str, seed: str, trials: int) -> list[tuple[str, str]]:
    """Every line number one too high, as a model counting from 0 writes them."""
    rows = [row.partition(": ") for row in text_lines(output)]
    return [("off by one", "".join(f"{int(number) + 1}: {text}" for number, _, text in rows))] if rows else []


@pytest.fixture
def numbered_lines():
    """A toy format, registered for one test: what adding a format takes, and all it takes."""
    fmt = register(Format(
        name="numbered-lines",
        fence="lines",
        instruction='Reply with one line per changed line: `N: "text"`, line N of the file becomes the JSON string.',
        reference=_numbered_lines,
        apply=_apply_numbered_lines,
        perturb=_off_by_one,
    ))
    yield fmt
    unregister(fmt.name)


def test_a_format_registered_alone_is_measured_by_the_evals(numbered_lines):
    from evals.run import measure

    report = measure(SUITE, ("whole", "numbered-lines"), len, ot_trials=1, progress=False)
    summary = report.summary.formats["numbered-lines"]
    whole = report.summary.formats["whole"]
    assert summary.applies == 1.0 and summary.cases == len(SUITE)
    assert 0 < summary.tokens_median < whole.tokens_median and (summary.saved_median or 0) > 0
    assert set(summary.perturbed_by_kind or {}) == {"off by one"} and summary.perturbed_trials == len(SUITE)
    assert (summary.perturbed_applies or 0) < 1.0


def test_a_format_registered_alone_is_prompted_and_fenced_as_it_says(numbered_lines):
    from evals.decode import edit_prompt, fenced, written_output

    case = SUITE[0]
    prompt = edit_prompt(case, "numbered-lines")
    assert numbered_lines.instruction in prompt and f"```lines {case['path']}," in prompt
    output = _numbered_lines(case["before"], case["after"])
    assert written_output(case, "numbered-lines") == fenced(case, "numbered-lines", output)
    assert fenced(case, "numbered-lines", output) == f"```lines {case['path']}\n{output}```"


def test_agent_eval_takes_a_format_registered_alone(numbered_lines, tmp_path):
    from evals.command import main

    out = tmp_path / "report.json"
    assert main(["--formats", "whole,numbered-lines", "--drafters", "none", "--limit", "2", "--json", str(out)]) == 0
    assert list(json.loads(out.read_text())["summary"]["formats"]) == ["whole", "numbered-lines"]


def test_an_unregistered_format_is_unknown_again(numbered_lines):
    assert format_names()[-1] == "numbered-lines"
    unregister("numbered-lines")
    assert "numbered-lines" not in format_names()
    with pytest.raises(ValueError, match="unknown edit format 'numbered-lines'"):
        get_format("numbered-lines")
