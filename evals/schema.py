"""The JSON report of `agent eval`, typed: what each case measured, per format and per drafter, and the summaries.

The field names are the JSON's (README, Decoding evals): `cases[i].formats[fmt].{tokens, applies}`,
`cases[i].decode[drafter].formats[fmt].{target_forwards, …}`, `summary.{formats, decode, cost, live}`. A report
carries `"schema": SCHEMA`; one written before the field is read when it has the same shape. A field marked
`OPTIONAL` is left out of the JSON while it is None (a figure not measured, as reports have always done).
"""

from __future__ import annotations

import json
import types
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

SCHEMA = 1
OPTIONAL = {"optional": True}  # field metadata: omitted from the JSON while None


class ReportError(ValueError):
    """A JSON file that is not a report this `agent eval` reads; the message names the field that is wrong."""


@dataclass
class Perturbation:
    """One model-like mistake in a format's minimal output, and how it lands."""

    kind: str
    outcome: str  # "exact", "refused" or "wrong"
    applies: bool
    grounded: bool | None = field(default=None, metadata=OPTIONAL)  # None: measured before grounding was


@dataclass
class FormatFigures:
    """One format's minimal correct output on one case: its size, whether it applies, and its perturbations."""

    tokens: int
    chars: int
    applies: bool
    perturbed: list[Perturbation] | None = field(default=None, metadata=OPTIONAL)  # None: a format without any


@dataclass
class ForcedRun:
    """One reference-forced generation (a case, a format, a drafter) and whether that format applies on the case:
    every figure of the cost per applied edit in one row."""

    tokens: int
    target_forwards: int
    seconds: float
    drafted: int
    accepted: int
    applies: bool | None = None
    applies_perturbed: float | None = None  # the share of the case's perturbations that apply
    applies_grounded: float | None = None  # of those grounded decoding allows (None: not measured)


@dataclass
class DrafterRun:
    """One drafter on one case: its forwards and seconds summed over the formats decoded, and each format's run."""

    target_forwards: int
    seconds: float
    formats: dict[str, ForcedRun]

    @classmethod
    def of(cls, runs: dict[str, ForcedRun]) -> DrafterRun:
        return cls(sum(run.target_forwards for run in runs.values()),
                   round(sum(run.seconds for run in runs.values()), 4), runs)


@dataclass
class CaseFigures:
    """Everything measured on one case: per format (`formats`), per drafter (`decode`, empty where not decoded)
    and through a live model (`live`)."""

    id: str
    language: str | None
    formats: dict[str, FormatFigures]
    decode: dict[str, DrafterRun] = field(default_factory=dict)
    live: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)


@dataclass
class FormatSummary:
    """One format over every case measured: tokens, tokens saved against the whole file (when whole was measured),
    apply rates, and those of its perturbations (for a format that has them)."""

    cases: int
    tokens_median: float
    tokens_p90: float
    applies: float
    saved_median: float | None = field(default=None, metadata=OPTIONAL)
    saved_p90: float | None = field(default=None, metadata=OPTIONAL)
    saved_share_median: float | None = field(default=None, metadata=OPTIONAL)
    perturbed_trials: int | None = field(default=None, metadata=OPTIONAL)
    perturbed_applies: float | None = field(default=None, metadata=OPTIONAL)
    perturbed_wrong: float | None = field(default=None, metadata=OPTIONAL)
    perturbed_by_kind: dict[str, dict[str, Any]] | None = field(default=None, metadata=OPTIONAL)
    grounded_trials: int | None = field(default=None, metadata=OPTIONAL)
    grounded_applies: float | None = field(default=None, metadata=OPTIONAL)


@dataclass
class DecodeSummary:
    """The decoding evals: what was decoded, and per format (reference-forced) and per workload (free-running)
    each drafter's totals and ratios to off."""

    cases: int
    formats: list[str]
    drafters: list[str]
    whole_cases: int
    reference_forced: dict[str, dict[str, dict[str, Any]]]
    free_running: dict[str, dict[str, dict[str, Any]]]
    max_tokens: int  # new tokens per free-running generation


@dataclass
class PerApplied:
    """Target forwards per applied edit on one basis: over the edits' median forwards and over their mean. None
    where the format never applies on that basis (no number of tries makes it)."""

    median: float | None
    mean: float | None


@dataclass
class CostRow:
    """One format with its best drafter (`evals.cost.format_row`): totals over the edits decoded, its apply rate per
    basis ("perturbed", "grounded", "clean") and its forwards per applied edit per basis. A report written before
    the grounded basis has no "grounded" key in either."""

    drafter: str
    edits: int
    tokens: int
    target_forwards: int
    tokens_per_forward: float
    seconds: float
    forwards_median: float
    rates: dict[str, float]
    per_applied: dict[str, PerApplied]


@dataclass
class RatioFigures:
    """The subject's cost ÷ an alternative's on one basis: the median of the per-edit ratios and the ratio of the
    totals; None where either never applies on it."""

    median: float | None
    total: float | None


@dataclass
class CostRatio:
    """An OT form against one alternative (a format with a drafter, or the cheapest alternative per edit, whose
    drafter is None) over the edits both were decoded on; `wins`: the edits where the OT form costs less per
    applied edit (perturbed), `wins_grounded` the same on the grounded basis (None where not known)."""

    format: str
    drafter: str | None
    why: str
    edits: int
    forwards: RatioFigures
    perturbed: RatioFigures
    clean: RatioFigures
    grounded: RatioFigures | None = field(default=None, metadata=OPTIONAL)  # None: written before that basis
    wins: int | None = field(default=None, metadata=OPTIONAL)
    wins_grounded: int | None = field(default=None, metadata=OPTIONAL)


@dataclass
class CostSummary:
    """The cost per applied edit (`evals.cost.summarize_cost`): each format with its best drafter, OT (`subject`)
    against each alternative, and each other OT form decoded (`ot-lines`) the same way."""

    subject: str
    formats: dict[str, CostRow]
    ratios: list[CostRatio]
    other_subjects: dict[str, list[CostRatio]] = field(default_factory=dict)


@dataclass
class Summary:
    formats: dict[str, FormatSummary]
    decode: DecodeSummary | None = field(default=None, metadata=OPTIONAL)
    cost: CostSummary | None = field(default=None, metadata=OPTIONAL)
    live: dict[str, Any] | None = field(default=None, metadata=OPTIONAL)  # `evals.live.summarize`, model, api_base


@dataclass
class Report:
    """The report: per-case figures, the free-running rows (when decoded) and the summaries."""

    cases: list[CaseFigures]
    summary: Summary
    free_running: dict[str, dict[str, dict[str, Any]]] | None = field(default=None, metadata=OPTIONAL)
    draft_tokens: int | None = None  # a fixed draft length for every drafter; None: the engine's adaptive one
    weights: str = "float32"  # the embedded model's weight format when decoded (`decoding.engine.weights`)
    products: str = ""  # what computed its products (`decoding.engine.weights.products`); "" in older reports
    schema: int = SCHEMA

    def to_json(self) -> dict:
        return {name: _to_json(value) for name, value in _json_fields(self)}

    @classmethod
    def from_json(cls, data: object) -> Report:
        """The report in `data` (parsed JSON). Raises ReportError naming the first field that is missing or of the
        wrong type, or a schema this code does not read."""
        if isinstance(data, dict) and data.get("schema", SCHEMA) != SCHEMA:
            raise ReportError(f"schema {data['schema']!r}, and this agent eval reads schema {SCHEMA}")
        return _from_json(cls, data, "")


def read_report(path: Path) -> Report:
    """The report at `path`. Raises ReportError naming the file and what is wrong with it."""
    try:
        return Report.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path} is not JSON ({exc})") from exc
    except ReportError as exc:
        raise ReportError(f"{path} is not a JSON report of agent eval: {exc}") from exc


def _json_fields(instance: Any) -> list[tuple[str, object]]:
    """A dataclass's fields as the JSON has them: an `OPTIONAL` one left out while None."""
    return [(f.name, getattr(instance, f.name)) for f in fields(instance)
            if not (f.metadata.get("optional") and getattr(instance, f.name) is None)]


def _to_json(value: object) -> object:
    if is_dataclass(value) and not isinstance(value, type):
        return {name: _to_json(item) for name, item in _json_fields(value)}
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    return value


Built = TypeVar("Built")
SCALARS: dict[type, tuple[tuple[type, ...], str]] = {  # what JSON value each scalar field takes, named
    bool: ((bool,), "a boolean"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
}


def _from_json(kind: type[Built], data: object, where: str) -> Built:
    """`data` read as a `kind` (a dataclass here), checked field by field; `where` is its path in the report."""
    hints = get_type_hints(kind)
    if not isinstance(data, dict):
        raise ReportError(f"{where or 'the top level'} is {_name(data)}, not an object")
    values = {}
    for f in fields(kind):  # type: ignore[arg-type]
        inner = f"{where}.{f.name}" if where else f.name
        if f.name in data:
            values[f.name] = _read(hints[f.name], data[f.name], inner)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ReportError(f"{inner} is missing")
    return kind(**values)


def _read(kind: Any, value: object, where: str) -> Any:
    """`value` read as a `kind`: a scalar, `X | None`, a list, a dict with string keys, a dataclass, or Any."""
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):  # X | None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return None if value is None else _read(inner, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ReportError(f"{where} is {_name(value)}, not a list")
        return [_read(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ReportError(f"{where} is {_name(value)}, not an object")
        return {key: _read(args[1], item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(kind, type) and is_dataclass(kind):
        return _from_json(kind, value, where)
    accepted, name = SCALARS[kind]
    if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
        raise ReportError(f"{where} is {_name(value)}, not {name}")
    return value


def _name(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")

