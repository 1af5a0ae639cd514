"""Grounded decoding, free-running: the embedded model writes edit scripts few-shot, with grounding off and on.

The embedded Gemma 3 270M is a base model: it cannot follow a chat, but it continues a document. Each case is a
small edit from the built-in suite (`evals/suite`, 24 edits in Python, Rust, Go, JavaScript and TypeScript), cut
to the lines around the change (SNIPPET_CONTEXT lines either side) so a CPU decodes it in seconds. The prompt is
two worked examples and then the case, ending inside an open ```edit block; the model writes the script and
closes the block. Each case is decoded greedily three ways: grounding off, on (with the cursor drafter), and on
without drafting, which must give the same tokens. Reported per mode: closed blocks, how many parse, how many the
applier places (and of those, how many keep the file's syntax), how many are exactly the intended file, output
tokens, target forwards and the grounding's constrained tokens.

A 270M base model writes poor edits either way; what grounding changes is whether what it writes can be applied.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from evals.cases import load_suite
from tools.formats.lines import shared_ends
from tools.ot import Delete, Insert, Op, OTError
from tools.ot_script import ScriptParser, parse_script
from tools.patch import apply_edit
from tools.syntax import language_for

SNIPPET_CONTEXT = 4  # lines kept either side of the changed lines
MAX_NEW_TOKENS = 160
MODES = ("off", "on", "on-plain")  # grounding off / on with the cursor drafter / on without drafting

EXAMPLES = '''File config.py:
```
DEFAULTS = {
    "retries": 3,
    "timeout": 10,
}
```
Task: Raise the default timeout to 30 seconds.
```edit config.py
retain("    \\"timeout\\": ")
delete("10")
insert("30")
```

File app.js:
```
function greet(name) {
  console.log("Hello " + name);
}
```
Task: Greet with a template string.
```edit app.js
retain("  console.log(")
delete("\\"Hello \\" + name")
insert("`Hello ${name}`")
```

'''
HEADER = (
    "Edit scripts change a file: retain(\"text\") keeps the file's text up to and including it, delete(\"text\") "
    "removes the file's text, insert(\"text\") adds new text. Strings are JSON.\n\n"
)


@dataclass
class Snippet:
    id: str
    path: str
    instruction: str
    before: str
    after: str


def snippets(context: int = SNIPPET_CONTEXT) -> list[Snippet]:
    """The suite's edits, each cut to the lines it changes plus `context` lines either side."""
    out = []
    for case in load_suite():
        before, after = case["before"].splitlines(keepends=True), case["after"].splitlines(keepends=True)
        head, tail = shared_ends(before, after)
        start = max(0, head - context)
        keep = max(0, tail - context)
        out.append(Snippet(
            case["id"], case["path"], case["instruction"],
            "".join(before[start : len(before) - keep]), "".join(after[start : len(after) - keep]),
        ))
    return out


def prompt_for(snippet: Snippet) -> str:
    return (
        f"{HEADER}{EXAMPLES}File {snippet.path}:\n```\n{snippet.before}```\nTask: {snippet.instruction}\n"
        f"```edit {snippet.path}\n"
    )


_CLOSING_FENCE = re.compile(r"^```[ \t]*$", re.M)  # what ends the block, as the agent's protocol reads it


@dataclass
class Outcome:
    closed: bool = False  # the model ended the block with its fence
    parses: bool = False
    applies: bool = False  # the applier placed it (syntax aside)
    syntax_kept: bool = False  # ... and the file's syntax is no worse
    exact: bool = False
    tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0
    constrained: int = 0
    output: str = ""
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)


def judge(snippet: Snippet, text: str) -> Outcome:
    """Whether the block the model wrote closes, parses, applies and is exactly the intended edit."""
    outcome = Outcome(output=text)
    fence = _CLOSING_FENCE.search(text)
    script = text if fence is None else text[: fence.start()]
    outcome.closed = fence is not None
    if not outcome.closed:
        outcome.error = "the block is not closed"
        return outcome
    try:
        ops = parse_script(script)
    except OTError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.parses = True
    if not any(isinstance(op, Insert | Delete) for op in ops):
        outcome.error = "the script changes nothing"
        return outcome
    language = language_for(snippet.path)
    try:
        edit = apply_edit(snippet.before, ops, language, allow_broken=True)
    except OTError as exc:
        outcome.error = str(exc)
        return outcome
    outcome.applies = True
    outcome.syntax_kept = not any("syntax error" in note for note in edit.notes)
    outcome.exact = edit.after == snippet.after
    return outcome


def written_ops(text: str) -> list[Op]:
    """The ops a block's text holds: up to its closing fence, or, where the output was cut before it, the whole
    ops written and an open insert's text (the block closed at the cut). A syntax error raises OTError."""
    fence = _CLOSING_FENCE.search(text)
    parser = ScriptParser()
    parser.feed(text if fence is None else text[: fence.start()])
    partial = parser.partial_insert
    return parser.ops + ([Insert(partial)] if partial else [])


def places(snippet: Snippet, text: str) -> bool:
    """Whether the block the model wrote, closed or cut, places on the file (`agent apply --allow-broken`)."""
    try:
        apply_edit(snippet.before, written_ops(text), language_for(snippet.path), allow_broken=True)
    except OTError:
        return False
    return True


def run_grounded(
    loaded,
    cases: list[Snippet],
    max_new_tokens: int = MAX_NEW_TOKENS,
    on_case: Callable[[int, str, Outcome], None] | None = None,
    before_case: Callable[[int, str], None] | None = None,
    weights: str | None = None,
) -> dict[str, list[Outcome]]:
    """Decode every case in every mode with the loaded embedded model in the weight format `weights` (None: the
    default); `before_case(index, mode)` and `on_case(index, mode, outcome)` report progress."""
    from decoding.drafting.drafters import make_drafter
    from decoding.engine.generation import Generation, GenerationRequest
    from decoding.engine.grounding import EditGrounding, vocabulary
    from decoding.engine.target import make_target
    from decoding.serving.chat import stop_token_ids

    tokenizer, target = loaded.tokenizer, make_target(loaded.model, weights=weights)
    stops, vocab = stop_token_ids(tokenizer), vocabulary(tokenizer)
    results: dict[str, list[Outcome]] = {mode: [] for mode in MODES}
    for index, snippet in enumerate(cases):
        prompt = prompt_for(snippet)
        prompt_ids = tokenizer(prompt).input_ids
        source_ids = tokenizer(snippet.before, add_special_tokens=False).input_ids
        for mode in MODES:
            if before_case is not None:
                before_case(index, mode)
            grounding = None if mode == "off" else EditGrounding(vocab, snippet.before, stops, snippet.path, prompt)
            drafter = None if mode == "on-plain" else make_drafter("cursor", tokenizer=tokenizer)
            request = GenerationRequest(
                prompt=prompt_ids, max_new_tokens=max_new_tokens, drafter=drafter, sources=[source_ids],
                source_text=snippet.before, stop_ids=stops, grounding=grounding,
            )
            generation = Generation(target, request)
            started = time.perf_counter()
            for _ in generation:
                if _CLOSING_FENCE.search(tokenizer.decode(generation.tokens)):
                    break
            seconds = time.perf_counter() - started
            tokens = _through_closing_fence(tokenizer, generation.tokens)
            outcome = judge(snippet, tokenizer.decode(tokens))
            outcome.seconds, outcome.tokens, outcome.token_ids = seconds, len(tokens), tokens
            outcome.forwards = generation.stats.target_forwards
            outcome.constrained = grounding.stats.constrained_tokens if grounding else 0
            results[mode].append(outcome)
            if on_case is not None:
                on_case(index, mode, outcome)
    return results


def _through_closing_fence(tokenizer, tokens: list[int]) -> list[int]:
    """The tokens up to the one that completes the closing fence (a speculative step may have emitted more)."""
    for end in range(1, len(tokens) + 1):
        if _CLOSING_FENCE.search(tokenizer.decode(tokens[:end])):
            return tokens[:end]
    return tokens


def summary(results: dict[str, list[Outcome]]) -> dict:
    """Per mode: counts of closed / parses / applies / syntax kept / exact, tokens, forwards, constrained; and
    whether grounded speculative decoding gave grounded plain decoding's tokens on every case."""
    table = {}
    for mode, outcomes in results.items():
        table[mode] = {
            "cases": len(outcomes),
            **{key: sum(getattr(o, key) for o in outcomes) for key in ("closed", "parses", "applies", "syntax_kept",
                                                                        "exact", "tokens", "forwards", "constrained")},
            "seconds": round(sum(o.seconds for o in outcomes), 1),
        }
    pairs = zip(results.get("on", []), results.get("on-plain", []), strict=True)
    table["speculative_equals_plain"] = all(a.token_ids == b.token_ids for a, b in pairs)
    return table


def format_summary(table: dict) -> str:
    lines = [
        "grounded decoding, free-running (embedded Gemma 3 270M base model, few-shot; greedy)",
        f"{'grounding':<22} {'closed':>7} {'parse':>7} {'apply':>7} {'syntax ok':>9} {'exact':>7} {'tokens':>7} "
        f"{'forwards':>8} {'constrained':>11} {'seconds':>8}",
    ]
    names = {"off": "off (cursor drafter)", "on": "on (cursor drafter)", "on-plain": "on (no drafter)"}
    for mode in MODES:
        row = table.get(mode)
        if row is None:
            continue
        n = row["cases"]
        lines.append(
            f"{names[mode]:<22} {row['closed']:>4}/{n:<2} {row['parses']:>4}/{n:<2} {row['applies']:>4}/{n:<2} "
            f"{row['syntax_kept']:>6}/{n:<2} {row['exact']:>4}/{n:<2} {row['tokens']:>7} {row['forwards']:>8} "
            f"{row['constrained']:>11} {row['seconds']:>8}"
        )
    same = "yes" if table.get("speculative_equals_plain") else "NO"
    lines.append(f"grounded speculative output equals grounded plain output on every case: {same}")
    return "\n".join(lines)
