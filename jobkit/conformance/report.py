"""The report formats: terminal matrix, JUnit XML, JSON (a versioned schema, shipped:
``jobkit/data/conformance-report.schema.json``), self-contained HTML, and GitHub Actions
annotations and step summary."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result

WAIVED, FLAKY = "waived", "flaky"  # (jobkit.conformance.gate gives them)
BAD = (FAIL, ERROR, FLAKY)
SCHEMA_VERSION = 1


def _matrix(results: list[Result]) -> tuple[list[tuple[str, str, bool]], list[str], dict[tuple[str, str], Result]]:
    clauses: list[tuple[str, str, bool]] = []
    targets: list[str] = []
    cells: dict[tuple[str, str], Result] = {}
    for r in results:
        if (r.clause, r.title, r.must) not in clauses:
            clauses.append((r.clause, r.title, r.must))
        if r.target not in targets:
            targets.append(r.target)
        cells[(r.clause, r.target)] = r
    return clauses, targets, cells


def failed_must(results: list[Result]) -> list[Result]:
    return [r for r in results if r.must and r.outcome in BAD]


def terminal(results: list[Result], labels: dict[str, str]) -> str:
    """The matrix (target names in full, however long), counts per target, then each failure and
    error with its message, its repro command and the commands the clause ran."""
    clauses, targets, cells = _matrix(results)
    width = 46
    cols = {t: max(len(labels.get(t, t)), 7) + 2 for t in targets}
    head = "clause".ljust(7) + "title".ljust(width) + "".join(labels.get(t, t).rjust(cols[t]) for t in targets)
    lines = [head, "-" * len(head)]
    for cid, title, must in clauses:
        row = cid.ljust(7) + (title if len(title) < width - 1 else title[: width - 2] + "…").ljust(width)
        row += "".join((cells[(cid, t)].outcome if (cid, t) in cells else "-").rjust(cols[t]) for t in targets)
        lines.append(row + ("" if must else "  (SHOULD)"))
    lines.append("")
    for t in targets:
        rs = [r for r in results if r.target == t]
        counts = {o: sum(1 for r in rs if r.outcome == o) for o in (PASS, FAIL, NA, ERROR, WAIVED, FLAKY)}
        lines.append(f"{labels.get(t, t)}: {counts[PASS]} pass, {counts[FAIL]} FAIL, {counts[ERROR]} error, "
                     f"{counts[NA]} n/a, {counts[WAIVED]} waived, {counts[FLAKY]} flaky, "
                     f"{sum(r.seconds for r in rs):.0f}s")
    groups = (("Failures (the wrapper does not meet the clause)", (FAIL, FLAKY)),
              ("Errors (the suite or the target broke: nothing is known of the wrapper here)", (ERROR,)))
    for heading, outcomes in groups:
        rs = [r for r in results if r.outcome in outcomes]
        if rs:
            lines += ["", heading + ":"]
        for r in rs:
            lines.append(f"\n{r.outcome} {r.clause} on {labels.get(r.target, r.target)}: {r.message[:600]}")
            if r.repro:
                lines.append(f"  rerun: {r.repro}")
            for c in r.commands[-8:]:
                lines.append(f"  ran: {c[:300]}")
    return "\n".join(lines)


def github_annotations(results: list[Result], labels: dict[str, str]) -> str:
    """One ``::error`` workflow command per failed MUST clause (and per flaky clause)."""
    def esc(text: str) -> str:
        return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    out = []
    for r in results:
        if r.outcome == FLAKY or (r.must and r.outcome in (FAIL, ERROR)):
            title = esc(f"conformance {r.clause} {r.outcome} on {labels.get(r.target, r.target)}").replace(",", "%2C")
            body = r.message + (f"\nrerun: {r.repro}" if r.repro else "")
            out.append(f"::error title={title}::{esc(body)}")
    return "\n".join(out)


def github_summary(results: list[Result], labels: dict[str, str], meta: dict[str, Any]) -> str:
    """The matrix as Markdown, for $GITHUB_STEP_SUMMARY."""
    clauses, targets, cells = _matrix(results)
    mark = {PASS: "pass", FAIL: "**FAIL**", ERROR: "**error**", NA: "n/a", WAIVED: "waived", FLAKY: "**flaky**"}

    def md(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["## jobkit conformance", "",
             f"{len(failed_must(results))} MUST clause result(s) failed; exit code {meta.get('exit_code', '?')}.", "",
             "| clause | level | title | " + " | ".join(md(labels.get(t, t)) for t in targets) + " |",
             "|---|---|---|" + "---|" * len(targets)]
    for cid, title, must in clauses:
        lines.append(f"| {cid} | {'MUST' if must else 'SHOULD'} | {md(title)} | " + " | ".join(
            mark.get(cells[(cid, t)].outcome, cells[(cid, t)].outcome) if (cid, t) in cells else "-"
            for t in targets) + " |")
    bad = [r for r in results if r.outcome in BAD]
    if bad:
        lines += ["", "### Failures", ""]
        lines += [f"- **{r.clause}** on {md(labels.get(r.target, r.target))} ({r.outcome}): {md(r.message[:400])}"
                  + (f"<br>rerun: `{r.repro}`" if r.repro else "") for r in bad]
    return "\n".join(lines) + "\n"


def junit(results: list[Result], labels: dict[str, str]) -> str:
    suites = ET.Element("testsuites", name="jobkit conformance")
    for t in dict.fromkeys(r.target for r in results):
        rs = [r for r in results if r.target == t]
        suite = ET.SubElement(suites, "testsuite", name=labels.get(t, t), tests=str(len(rs)),
                              failures=str(sum(r.outcome in (FAIL, FLAKY) for r in rs)),
                              errors=str(sum(r.outcome == ERROR for r in rs)),
                              skipped=str(sum(r.outcome in (NA, WAIVED) for r in rs)),
                              time=f"{sum(r.seconds for r in rs):.2f}")
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{t}", name=f"{r.clause} {r.title}",
                                 time=f"{r.seconds:.2f}")
            props = ET.SubElement(case, "properties")
            for name, value in (("clause", r.clause), ("target", r.target), ("level", r.level),
                                ("outcome", r.outcome), ("repro", r.repro)):
                ET.SubElement(props, "property", name=name, value=value)
            detail = "\n\n".join([*(f"rerun: {r.repro}" for _ in [0] if r.repro), *r.evidence])
            if r.outcome in (FAIL, FLAKY):
                ET.SubElement(case, "failure", message=r.message[:500], type=r.outcome).text = detail
            elif r.outcome == ERROR:
                ET.SubElement(case, "error", message=r.message[:500]).text = detail
            elif r.outcome in (NA, WAIVED):
                ET.SubElement(case, "skipped", message=f"{r.outcome}: {r.message[:500]}")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def as_json(results: list[Result], meta: dict[str, Any]) -> str:
    return json.dumps({"schema_version": SCHEMA_VERSION, "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()),
                       **meta, "failed_must": len(failed_must(results)),
                       "results": [r.as_dict() for r in results]}, indent=2)


def as_html(results: list[Result], meta: dict[str, Any], labels: dict[str, str]) -> str:
    clauses, targets, cells = _matrix(results)
    color = {PASS: "#d6f5d6", FAIL: "#f8c9c9", ERROR: "#f3b0e8", NA: "#eeeeee", WAIVED: "#fff3c4", FLAKY: "#ffd59e"}
    e = html.escape
    rows = []
    for cid, title, must in clauses:
        tds = []
        for t in targets:
            r = cells.get((cid, t))
            if r is None:
                tds.append("<td>-</td>")
                continue
            link = f'<a href="#{e(cid)}-{e(t)}">{e(r.outcome)}</a>' if r.outcome in BAD else e(r.outcome)
            tds.append(f'<td style="background:{color[r.outcome]}" title="{e(r.message)}">{link}</td>')
        rows.append(f"<tr><th>{e(cid)}</th><td class=t>{e(title)}{'' if must else ' <i>(SHOULD)</i>'}</td>"
                    + "".join(tds) + "</tr>")
    details = []
    for r in results:
        if r.outcome in BAD:
            details.append(f'<section id="{e(r.clause)}-{e(r.target)}"><h3>{e(r.clause)} on '
                           f"{e(labels.get(r.target, r.target))}: {e(r.outcome)}</h3><p>{e(r.message)}</p>"
                           + (f"<p>Rerun just this: <code>{e(r.repro)}</code></p>" if r.repro else "")
                           + (f"<p>Commands the clause ran:</p><pre>{e(chr(10).join(r.commands))}</pre>"
                              if r.commands else "")
                           + "".join(f"<pre>{e(x)}</pre>" for x in r.evidence) + "</section>")
    head = "".join(f"<th>{e(labels.get(t, t))}</th>" for t in targets)
    engine = f" lab containers on {e(str(meta['engine']))}," if meta.get("engine") else ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>jobkit conformance</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;
padding:3px 8px;text-align:center}}td.t{{text-align:left}}pre{{background:#f6f6f6;padding:8px;overflow:auto;
max-height:30em}}</style></head><body><h1>jobkit conformance</h1>
<p>wrapper: <code>{e(str(meta.get("wrapper")))}</code>, schema: <code>{e(str(meta.get("schema")))}</code>,
base dir: <code>{e(str(meta.get("base_dir")))}</code>,{engine} {e(when)};
{len(failed_must(results))} MUST clause result(s) failed.</p>
<table><tr><th>clause</th><th>title</th>{head}</tr>{"".join(rows)}</table>
<h2>Evidence behind every failure</h2>{"".join(details) or "<p>none</p>"}</body></html>"""


def write_all(results: list[Result], report_dir: Path, meta: dict[str, Any], labels: dict[str, str]) -> list[Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    out = {"conformance.txt": terminal(results, labels), "conformance.junit.xml": junit(results, labels),
           "conformance.json": as_json(results, meta), "conformance.html": as_html(results, meta, labels)}
    paths = []
    for name, text in out.items():
        p = report_dir / name
        p.write_text(text)
        paths.append(p)
    return paths


def schema_path() -> Path:
    """The JSON Schema of conformance.json (its ``schema_version``), shipped with the package."""
    return Path(__file__).resolve().parent.parent / "data" / "conformance-report.schema.json"
