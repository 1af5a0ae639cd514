"""Live-model evals: each case through the agent's edit turn against a real server.

The conversation is the one the agent has when it is about to edit: its system prompt, the task, the
model's read of the file and the file's text as the read tool returns it; the file goes along as
`prediction` (as the agent sends it). The reply's edit blocks for the file are applied with the agent's
tolerant applier (an `overwrite` replaces the file), in memory. Reported per case: whether the file came
out exactly as intended, whether its syntax is valid, output tokens, wall time and the server's
speculation statistics (`usage.speculation`, where the server reports them).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from agent.client import Model, ModelFailed, ModelTimeout, ModelUnavailable
from agent.loop import first_messages
from agent.protocol import parse_actions
from evals.progress import Progress
from evals.schema import Report
from tools.formats import FormatError, get_format
from tools.syntax import language_for, syntax_problems
from tools.workspace import Workspace


def edit_turn(case: dict) -> list[dict]:
    """The agent's messages at its edit turn for `case`: system prompt, task, a read of the file and its result."""
    path = case.get("path") or "file.txt"
    with tempfile.TemporaryDirectory(prefix="retain-eval-") as root:
        (Path(root) / path).parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / path).write_text(case["before"], encoding="utf-8")
        workspace = Workspace(root)
        messages = first_messages(case.get("instruction") or "Make the change.", workspace)
        read = workspace.read(path)
    return [
        *messages,
        {"role": "assistant", "content": f"```read {path}```"},
        {"role": "user", "content": f"[read {path}: {read.status}]\n{read.output}"},
    ]


def run_case(case: dict, model: Model, max_tokens: int, timeout: float) -> dict:
    """One case's live figures: exact, applied, syntax_valid (of the edited file; None when nothing applied),
    output_tokens, seconds, speculation, error (also when the reply was cut off at `max_tokens`)."""
    path = case.get("path") or "file.txt"
    language = language_for(path)
    started = time.perf_counter()
    try:
        reply = model.complete(edit_turn(case), prediction=case["before"], max_tokens=max_tokens, timeout=timeout)
    except (ModelFailed, ModelTimeout, ModelUnavailable) as exc:  # one case lost, not the report
        return {"exact": False, "applied": False, "syntax_valid": None, "output_tokens": None,
                "seconds": round(time.perf_counter() - started, 3), "speculation": None, "error": str(exc)}
    seconds = round(time.perf_counter() - started, 3)
    text, error, applied = case["before"], None, False
    for action in parse_actions(reply.text):
        if action.args.get("path") != path:
            continue
        if action.tool == "edit":
            try:
                text = get_format("ot").apply(text, str(action.args.get("script", "")), language)
                applied = True
            except FormatError as exc:
                error = f"edit refused: {exc}"
        elif action.tool == "create" and action.args.get("overwrite"):
            text, applied = str(action.args.get("content", "")), True
        elif action.tool == "create":
            error = "create refused: the file exists (the agent overwrites only with an overwrite block)"
    if reply.finish_reason == "length":
        error = f"reply cut off at {max_tokens} tokens" + (f" ({error})" if error else "")
    elif not applied and error is None:
        error = "no edit of the file in the reply"
    return {
        "exact": text == case["after"],
        "applied": applied,
        "syntax_valid": None if language is None or not applied else not syntax_problems(text, language),
        "output_tokens": reply.usage.get("completion_tokens"),
        "seconds": seconds,
        "speculation": reply.usage.get("speculation"),
        "error": error,
    }


def summarize(figures: list[dict]) -> dict:
    """Rates over the cases, medians of tokens and time, and speculation totals where the server gave them."""
    count = len(figures)
    tokens = [f["output_tokens"] for f in figures if f["output_tokens"] is not None]
    checked = [f["syntax_valid"] for f in figures if f["syntax_valid"] is not None]
    stats = [f["speculation"] for f in figures if f["speculation"]]
    drafted, accepted = sum(s.get("drafted", 0) for s in stats), sum(s.get("accepted", 0) for s in stats)
    return {
        "cases": count,
        "exact": sum(f["exact"] for f in figures) / count,
        "applied": sum(f["applied"] for f in figures) / count,
        "syntax_valid": sum(checked) / len(checked) if checked else None,
        "errors": sum(f["error"] is not None for f in figures),
        "output_tokens_median": statistics.median(tokens) if tokens else None,
        "seconds_median": statistics.median(f["seconds"] for f in figures),
        "drafted": drafted if stats else None,
        "accepted": accepted if stats else None,
        "acceptance": accepted / drafted if stats and drafted else None,
        "target_forwards": sum(s.get("target_forwards", 0) for s in stats) if stats else None,
    }


def run_live(
    report: Report, cases: list[dict], model: Model, max_tokens: int, timeout: float, progress: bool = True
) -> None:
    """Add each case's live figures (`live`) and their summary to `report`."""
    by_id = {case.id: case for case in report.cases}
    bar = Progress(len(cases), "live", progress)
    figures = []
    for case in cases:
        bar.step(case["id"])
        figures.append(run_case(case, model, max_tokens, timeout))
        by_id[case["id"]].live = figures[-1]
    bar.close()
    report.summary.live = {"model": model.name, "api_base": model.api_base} | summarize(figures)
