"""Editing evals, the report: the tables printed, the plots drawn and the JSON written (atomically)."""

from __future__ import annotations

import json
from pathlib import Path

from evals.schema import CostRatio, DecodeSummary, PerApplied, RatioFigures, Report, Summary


def write_report(report: dict, path: Path) -> None:
    """Write the JSON report all at once, so an interrupted run leaves the last complete one."""
    from tools.text_files import atomic_write

    atomic_write(path, json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8"))


def _number(value) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def render(report: Report, title: str) -> str:
    """Markdown: tokens and apply rates per format, apply rates per perturbation kind, then the decoding and live
    tables when they were measured."""
    summary = report.summary.formats
    lines = [title, "",
             "| format | tokens median | tokens p90 | saved vs whole median | saved p90 | saved % median "
             "| applies | perturbed: applies | perturbed: wrong | perturbed n | grounded: applies | grounded n |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for fmt, part in summary.items():
        lines.append(
            f"| {fmt} | {_number(part.tokens_median)} | {_number(part.tokens_p90)} "
            f"| {_number(part.saved_median)} | {_number(part.saved_p90)} "
            f"| {_percent(part.saved_share_median)} | {_percent(part.applies)} "
            f"| {_percent(part.perturbed_applies)} | {_percent(part.perturbed_wrong)} "
            f"| {_count(part.perturbed_trials)} | {_percent(part.grounded_applies)} "
            f"| {_count(part.grounded_trials)} |"
        )
    kinds = [(fmt, kind, figures) for fmt, part in summary.items()
             for kind, figures in (part.perturbed_by_kind or {}).items()]
    if kinds:
        lines += ["", "Each format has its own perturbations; \"wrong\" = applied somewhere other than intended "
                  "(the rest were refused); \"grounding allows\" = the share grounded decoding would still let a "
                  "model write (grounded: the apply rate over those alone; the clean rate where it allows none).", "",
                  "| format | perturbation | applies | wrong | grounding allows | n |", "|---|---|---|---|---|---|"]
        lines += [f"| {fmt} | {kind} | {_percent(f['applies'])} | {_percent(f['wrong'])} "
                  f"| {_percent(f.get('grounded'))} | {f['trials']} |" for fmt, kind, f in kinds]
    if report.summary.decode:
        lines += ["", *render_decode(report.summary.decode)]
    if report.summary.decode and report.summary.cost and report.summary.cost.formats:
        lines += ["", *render_cost(report.summary)]
    if report.summary.live:
        lines += ["", *render_live(report.summary.live)]
    return "\n".join(lines)


SAME_AS_OFF = {True: "yes", False: "NO", None: "n/a (no off)"}


def render_decode(decode: DecodeSummary) -> list[str]:
    """The reference-forced and free-running tables, side by side in one report."""
    head = ("| {what} | drafter | tokens | target forwards | tokens / forward | forwards: off ÷ this "
            "| decode s | speedup vs off | speedup median |")
    rule = "|---|---|---|---|---|---|---|---|---|"

    def rows(name: str, per_drafter: dict) -> list[str]:
        return [f"| {name} | {drafter} | {_number(t['tokens'])} | {_number(t['target_forwards'])} "
                f"| {t['tokens_per_forward']:.2f} | {_times(t.get('forwards_vs_off'))} | {t['seconds']:.1f} "
                f"| {_times(t.get('speedup_vs_off'))} | {_times(t.get('speedup_vs_off_median'))} |"
                for drafter, t in per_drafter.items()]

    lines = [f"Decoding, reference-forced on {decode.cases} edits{_whole_note(decode)}: the embedded Gemma 3 "
             "270M verifies each "
             "format's minimal correct output as if it wrote it. This estimates the speedup for a model that "
             "writes this output; it is not the 270M's own output.", "", head.format(what="format"), rule]
    for fmt, per_drafter in decode.reference_forced.items():
        lines += rows(fmt, per_drafter)
    if decode.free_running:
        lines += ["", f"Decoding, free-running: the model's own greedy output on the standard workloads (up to "
                  f"{decode.max_tokens} tokens): real acceptance, decode time after the prompt.", "",
                  head.format(what="workload").replace("| speedup median |", "| same output as off |"), rule]
    for name, per_drafter in decode.free_running.items():
        lines += [row.rsplit("|", 2)[0] + f"| {SAME_AS_OFF[per_drafter[drafter]['same_as_off']]} |"
                  for row, drafter in zip(rows(name, per_drafter), per_drafter, strict=True)]
    lines += ["", "Target forwards include the prompt's; decode seconds run from the first token to the last "
              "(the prompt is prefilled once per case and shared). Speedup = off's decode time ÷ this drafter's."]
    return lines


def _whole_note(decode: DecodeSummary) -> str:
    """Where whole files were decoded on fewer edits than the other formats, how many."""
    fewer = "whole" in decode.formats and decode.whole_cases < decode.cases
    return f" (whole files on {decode.whole_cases} of them, the long ones to decode)" if fewer else ""


def _ratio_name(ratio: CostRatio) -> str:
    return ratio.format if ratio.drafter is None else f"{ratio.format} + {ratio.drafter}"


def render_cost(summary: Summary) -> list[str]:
    """The cost per applied edit: each format with its best drafter, then the ratio of OT (and of each other OT form
    decoded) to each alternative."""
    cost, decode = summary.cost, summary.decode
    assert cost is not None and decode is not None, "the cost is of a decoded report"
    measured = next(iter(summary.formats.values())).cases
    lines = [f"Cost per applied edit, reference-forced on {decode.cases} edits{_whole_note(decode)}: each format "
             "with its best drafter (fewest target forwards). Forwards per applied edit = target forwards ÷ the "
             f"format's apply rate over all {measured} edits measured: perturbed (the minimal output with the "
             "mistakes models make, the model-like rate; whole files have no perturbations, so their clean rate), "
             "grounded (over the mistakes grounded decoding still lets a model write; n/a in a report measured "
             "before it) and clean (the minimal output).", "",
             "| format | best drafter | edits | tokens / forward | forwards median | applies perturbed "
             "| applies grounded | applies clean | per applied edit, perturbed: median | mean | grounded: median "
             "| mean | clean: median | mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    unknown = PerApplied(None, None)  # a report written before the grounded basis
    for fmt, row in cost.formats.items():
        per, rates = row.per_applied, row.rates
        grounded = per.get("grounded", unknown)
        lines.append(f"| {fmt} | {row.drafter} | {row.edits} | {row.tokens_per_forward:.2f} "
                     f"| {_number(row.forwards_median)} | {_percent(rates['perturbed'])} "
                     f"| {_percent(rates.get('grounded'))} | {_percent(rates['clean'])} "
                     f"| {_number(per['perturbed'].median)} | {_number(per['perturbed'].mean)} "
                     f"| {_number(grounded.median)} | {_number(grounded.mean)} "
                     f"| {_number(per['clean'].median)} | {_number(per['clean'].mean)} |")
    subjects = {cost.subject: cost.ratios} | cost.other_subjects
    for fmt, ratios in subjects.items():
        if ratios:
            lines += ["", *_render_ratios(fmt, cost.formats[fmt].drafter, ratios)]
    return lines


def _render_ratios(subject: str, drafter: str, ratios: list[CostRatio]) -> list[str]:
    """One OT form with its best drafter against each alternative."""
    lines = [f"{subject} + {drafter} against each alternative: its forwards per applied "
             "edit ÷ the alternative's, the median over the edits both were decoded on and the ratio of the "
             "totals (below 1.00x OT costs less).", "",
             "| alternative | why | edits | perturbed: median | total | grounded: median | total | clean: median "
             "| total | forwards alone: median | total | OT cheaper (perturbed) | OT cheaper (grounded) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    unknown = RatioFigures(None, None)  # a report written before the grounded basis
    return lines + [f"| {_ratio_name(r)} | {r.why} | {r.edits} | {_times(r.perturbed.median)} "
                    f"| {_times(r.perturbed.total)} | {_times((r.grounded or unknown).median)} "
                    f"| {_times((r.grounded or unknown).total)} | {_times(r.clean.median)} "
                    f"| {_times(r.clean.total)} | {_times(r.forwards.median)} "
                    f"| {_times(r.forwards.total)} | {_count(r.wins)} of {r.edits} "
                    f"| {_count(r.wins_grounded)} of {r.edits} |"
                    for r in ratios]


def render_live(live: dict) -> list[str]:
    acceptance = live["acceptance"]
    return [f"Live model {live['model']} at {live['api_base'] or 'its default endpoint'}: {live['cases']} edits "
            "through the agent's edit turn", "",
            "| exact file | edit applied | syntax valid | errors | output tokens median | seconds median "
            "| drafted | accepted | acceptance |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {_percent(live['exact'])} | {_percent(live['applied'])} | {_percent(live['syntax_valid'])} "
            f"| {live['errors']} | {_number(live['output_tokens_median'])} | {live['seconds_median']:.1f} "
            f"| {_number(live['drafted'])} | {_number(live['accepted'])} | {_percent(acceptance)} |"]


def plot(report: Report, out: Path) -> list[Path]:
    """PNGs: the distribution of output tokens per format (log scale) at `out`, and, when decoding was
    measured, the speedup per drafter at `<out stem>-speedup.png`. Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    summary = report.summary.formats
    formats = list(summary)
    data = [[case.formats[fmt].tokens or 1 for case in report.cases] for fmt in formats]
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.boxplot(data, tick_labels=formats, showfliers=True)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_ylabel("output tokens (Gemma tokenizer, log scale)")
    axes.set_title(f"Minimal correct output per edit format, {len(report.cases)} edits")
    for x, fmt in enumerate(formats, 1):
        median = summary[fmt].tokens_median
        axes.annotate(f"{median:,.0f}", (x, median), xytext=(12, 0), textcoords="offset points", va="center")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    written = [out]
    if report.summary.decode:
        written.append(out.with_name(f"{out.stem}-speedup.png"))
        plot_speedup(report.summary.decode, written[-1])
    return written


def plot_speedup(decode: DecodeSummary, out: Path) -> None:
    """Grouped bars: speedup vs no drafting per drafter (decode time; the dot marks the ratio of forwards), for
    each reference-forced format and each free-running workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(f"{fmt}\n(forced)", per) for fmt, per in decode.reference_forced.items()]
    groups += [(f"{name}\n(free)", per) for name, per in decode.free_running.items()]
    drafters = [d for d in decode.drafters if d != "off"]
    figure, axes = plt.subplots(figsize=(max(8.0, 1.3 * len(groups) + 2), 4.8))
    width = 0.8 / max(len(drafters), 1)
    for i, drafter in enumerate(drafters):
        xs = [g + (i - (len(drafters) - 1) / 2) * width for g in range(len(groups))]
        speed = [per[drafter].get("speedup_vs_off") or 0 for _, per in groups]
        forwards = [per[drafter].get("forwards_vs_off") or 0 for _, per in groups]
        bars = axes.bar(xs, speed, width, label=f"{drafter}: decode time")
        axes.scatter(xs, forwards, color=bars.patches[0].get_facecolor(), edgecolor="black", zorder=3, s=24)
    axes.axhline(1.0, color="grey", linewidth=0.8)
    axes.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=8)
    axes.set_ylabel("speedup vs no drafting (×)")
    axes.set_title(f"Speedup per drafter; forced = estimate for a model writing that output "
                   f"({decode.cases} edits)\ndots: target forwards, off ÷ drafter", fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
