"""The four report formats: terminal matrix, JUnit XML, JSON, self-contained HTML."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from jobkit.conformance.runner import ERROR, FAIL, NA, PASS, Result


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
    return [r for r in results if r.must and r.outcome in (FAIL, ERROR)]


def terminal(results: list[Result], labels: dict[str, str]) -> str:
    clauses, targets, cells = _matrix(results)
    width = 46
    head = "clause".ljust(7) + "title".ljust(width) + "".join(labels.get(t, t)[:16].rjust(17) for t in targets)
    lines = [head, "-" * len(head)]
    for cid, title, must in clauses:
        row = cid.ljust(7) + (title if len(title) < width - 1 else title[: width - 2] + "…").ljust(width)
        row += "".join(cells[(cid, t)].outcome.rjust(17) if (cid, t) in cells else "-".rjust(17) for t in targets)
        lines.append(row + ("" if must else "  (SHOULD)"))
    lines.append("")
    for t in targets:
        rs = [r for r in results if r.target == t]
        counts = {o: sum(1 for r in rs if r.outcome == o) for o in (PASS, FAIL, NA, ERROR)}
        lines.append(f"{labels.get(t, t)}: {counts[PASS]} pass, {counts[FAIL]} FAIL, {counts[ERROR]} error, "
                     f"{counts[NA]} n/a, {sum(r.seconds for r in rs):.0f}s")
    for r in results:
        if r.outcome in (FAIL, ERROR):
            lines.append(f"{r.outcome} {r.clause} on {labels.get(r.target, r.target)}: {r.message[:300]}")
    return "\n".join(lines)


def junit(results: list[Result], labels: dict[str, str]) -> str:
    suites = ET.Element("testsuites", name="jobkit conformance")
    for t in dict.fromkeys(r.target for r in results):
        rs = [r for r in results if r.target == t]
        suite = ET.SubElement(suites, "testsuite", name=labels.get(t, t), tests=str(len(rs)),
                              failures=str(sum(r.outcome == FAIL for r in rs)),
                              errors=str(sum(r.outcome == ERROR for r in rs)),
                              skipped=str(sum(r.outcome == NA for r in rs)),
                              time=f"{sum(r.seconds for r in rs):.2f}")
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"conformance.{t}", name=f"{r.clause} {r.title}",
                                 time=f"{r.seconds:.2f}")
            if r.outcome == FAIL:
                ET.SubElement(case, "failure", message=r.message[:500]).text = "\n\n".join(r.evidence)
            elif r.outcome == ERROR:
                ET.SubElement(case, "error", message=r.message[:500]).text = "\n\n".join(r.evidence)
            elif r.outcome == NA:
                ET.SubElement(case, "skipped", message=r.message[:500])
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def as_json(results: list[Result], meta: dict[str, Any]) -> str:
    return json.dumps({**meta, "failed_must": len(failed_must(results)),
                       "results": [r.as_dict() for r in results]}, indent=2)


def as_html(results: list[Result], meta: dict[str, Any], labels: dict[str, str]) -> str:
    clauses, targets, cells = _matrix(results)
    color = {PASS: "#d6f5d6", FAIL: "#f8c9c9", ERROR: "#f3b0e8", NA: "#eeeeee"}
    e = html.escape
    rows = []
    for cid, title, must in clauses:
        tds = []
        for t in targets:
            r = cells.get((cid, t))
            if r is None:
                tds.append("<td>-</td>")
                continue
            link = f'<a href="#{e(cid)}-{e(t)}">{e(r.outcome)}</a>' if r.outcome in (FAIL, ERROR) else e(r.outcome)
            tds.append(f'<td style="background:{color[r.outcome]}" title="{e(r.message)}">{link}</td>')
        rows.append(f"<tr><th>{e(cid)}</th><td class=t>{e(title)}{'' if must else ' <i>(SHOULD)</i>'}</td>"
                    + "".join(tds) + "</tr>")
    details = []
    for r in results:
        if r.outcome in (FAIL, ERROR):
            details.append(f'<section id="{e(r.clause)}-{e(r.target)}"><h3>{e(r.clause)} on '
                           f"{e(labels.get(r.target, r.target))}: {e(r.outcome)}</h3><p>{e(r.message)}</p>"
                           + "".join(f"<pre>{e(x)}</pre>" for x in r.evidence) + "</section>")
    head = "".join(f"<th>{e(labels.get(t, t))}</th>" for t in targets)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>jobkit conformance</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;
padding:3px 8px;text-align:center}}td.t{{text-align:left}}pre{{background:#f6f6f6;padding:8px;overflow:auto;
max-height:30em}}</style></head><body><h1>jobkit conformance</h1>
<p>wrapper: <code>{e(str(meta.get("wrapper")))}</code>, schema: <code>{e(str(meta.get("schema")))}</code>,
base dir: <code>{e(str(meta.get("base_dir")))}</code>, {e(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))};
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
