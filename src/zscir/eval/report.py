"""A self-contained HTML report: a bar chart of the headline metrics, the full table, and example queries
(reference image, text, each method's top-5 with the right answers marked). Images are inlined as small
PNG data URIs so the file can be moved, mailed or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from zscir.utils.io import write_text

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")


@dataclass
class Hit:
    """One ranked gallery image of a report example, and whether it is a right answer."""

    image_id: str
    path: Path
    score: float
    correct: bool


@dataclass
class Example:
    """One query shown in the report."""

    protocol: str
    reference_id: str
    reference_path: Path
    text: str
    answers: str  # e.g. "target e000123" or "3 ground truths"
    per_method: dict[str, list[Hit]] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def _thumb(path: str, size: int = 96) -> str:
    with Image.open(path) as src:
        im = src.convert("RGB")
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _bar_chart(rows: Sequence[str], series: dict[str, dict[str, float]]) -> str:
    """A grouped horizontal bar chart (inline SVG): one group per method, one bar per metric (0-100)."""
    metrics = list(series)
    bar_h, gap, plot_w = 11, 10, 420
    # room for the longest method name at 12 px (~7 px per character) so no label is clipped
    label_w = max(80, 12 + 7 * max((len(r) for r in rows), default=0))
    group_h = bar_h * len(metrics) + gap
    height = group_h * len(rows) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 60}" height="{height}" role="img" aria-label="metrics chart">']
    for x in range(0, 101, 20):
        px = label_w + plot_w * x / 100
        out.append(f'<line x1="{px}" y1="0" x2="{px}" y2="{height - 30}" stroke="#ddd"/>'
                   f'<text x="{px}" y="{height - 16}" font-size="10" text-anchor="middle">{x}</text>')
    for i, row in enumerate(rows):
        y0 = i * group_h
        out.append(f'<text x="{label_w - 6}" y="{y0 + group_h / 2}" font-size="12" text-anchor="end" dominant-baseline="middle">{html.escape(row)}</text>')
        for j, m in enumerate(metrics):
            v = series[m].get(row)
            if v is None:
                continue
            w = plot_w * max(0.0, min(100.0, v)) / 100
            y = y0 + j * bar_h
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" fill="{PALETTE[j % len(PALETTE)]}"><title>{html.escape(row)} {html.escape(m)} {v:.1f}</title></rect>'
                       f'<text x="{label_w + w + 3:.1f}" y="{y + bar_h - 3}" font-size="9">{v:.1f}</text>')
    for j, m in enumerate(metrics):
        x = label_w + j * 110
        out.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{x + 14}" y="{height - 3}" font-size="11">{html.escape(m)}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    parts = []
    for protocol, by_method in results.items():
        cols = list(dict.fromkeys(c for m in by_method.values() for c in m))
        best = {c: max(m.get(c, float("-inf")) for m in by_method.values()) for c in cols}
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = []
        for name, metrics in by_method.items():
            cells = "".join(
                f'<td class="{"best" if metrics.get(c) == best[c] else ""}">{metrics[c]:.1f}</td>' if c in metrics else "<td>-</td>"
                for c in cols
            )
            body.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
        parts.append(f"<h3>{html.escape(protocol)}</h3><table><tr><th>method</th>{head}</tr>{''.join(body)}</table>")
    return "".join(parts)


def _checks_table(rows: Sequence[dict[str, Any]]) -> str:
    """Claim or calibration rows as a table: what, the measured numbers (noise labels included), held or not."""
    body = "".join(
        f'<tr><th>{html.escape(str(r.get("claim", r.get("check", ""))))}</th><td>{html.escape(str(r["measured"]))}</td>'
        f'<td class="{"yes" if r["holds"] else "no"}">{"holds" if r["holds"] else "does not hold"}</td></tr>'
        for r in rows)
    return f'<table class="checks"><tr><th>check</th><th>measured</th><th></th></tr>{body}</table>'


def write_report(
    path: str | Path,
    title: str,
    meta: dict[str, str],
    results: dict[str, dict[str, dict[str, float]]],
    chart: dict[str, tuple[str, str]],
    examples: Sequence[Example],
    checks: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Write the HTML report. `chart` maps a series label to (protocol, metric), e.g.
    {"CIRR-like R@1": ("cirr", "R@1")}; `checks` maps a section title to rows of zscir.eval.claims (a
    "claim" or "check", what was "measured", whether it "holds"), shown after the metrics."""
    rows = list(dict.fromkeys(m for by in results.values() for m in by))
    series = {label: {m: results[p][m][k] for m in rows if m in results.get(p, {}) and k in results[p][m]}
              for label, (p, k) in chart.items()}
    cards = []
    for ex in examples:
        method_rows = []
        for name, hits in ex.per_method.items():
            cells = "".join(
                f'<figure class="{"ok" if h.correct else "no"}"><img src="{_thumb(str(h.path))}" alt="{html.escape(h.image_id)}">'
                f'<figcaption>{"&#10003;" if h.correct else "&#10007;"} {h.score:.3f}</figcaption></figure>'
                for h in hits
            )
            method_rows.append(f'<div class="mrow"><div class="mname">{html.escape(name)}</div>{cells}</div>')
        cards.append(
            f'<section class="card"><div class="query"><img src="{_thumb(str(ex.reference_path), 128)}" alt="reference {html.escape(ex.reference_id)}">'
            f'<div><div class="proto">{html.escape(ex.protocol)} &middot; reference {html.escape(ex.reference_id)}</div>'
            f'<div class="text">&ldquo;{html.escape(ex.text)}&rdquo;</div><div class="ans">{html.escape(ex.answers)}</div></div></div>'
            f'{"".join(method_rows)}</section>'
        )
    meta_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in meta.items())
    checks_html = "".join(f"<h2>{html.escape(t)}</h2>{_checks_table(rows)}" for t, rows in (checks or {}).items() if rows)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 8px 0 18px; font-size: 13px; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #eef7ee; }}
table.checks th, table.checks td {{ text-align: left; max-width: 760px; }} td.yes, td.no {{ white-space: nowrap; }}
td.yes {{ color: #2ca02c; }} td.no {{ color: #c0392b; font-weight: bold; }}
.card {{ border: 1px solid #ddd; border-radius: 8px; padding: 10px; margin: 12px 0; }}
.query {{ display: flex; gap: 12px; align-items: center; margin-bottom: 8px; }}
.query img {{ width: 128px; height: 128px; border: 3px solid #4e79a7; border-radius: 4px; }}
.text {{ font-size: 18px; margin: 4px 0; }}
.proto, .ans {{ color: #666; font-size: 12px; }}
.mrow {{ display: flex; align-items: center; gap: 6px; margin: 4px 0; }}
.mname {{ width: 130px; font-size: 13px; font-weight: 600; }}
figure {{ margin: 0; text-align: center; font-size: 11px; }}
figure img {{ width: 72px; height: 72px; border: 3px solid #ccc; border-radius: 4px; display: block; }}
figure.ok img {{ border-color: #2ca02c; }} figure.ok figcaption {{ color: #2ca02c; }}
figure.no img {{ border-color: #eee; }} figure.no figcaption {{ color: #999; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{meta_html}</table>
<h2>Headline metrics</h2>
{_bar_chart(rows, series)}
<h2>All metrics</h2>
{_table(results)}
{checks_html}
<h2>Example queries</h2>
<p>Each row is a method's top 5 (rank order, cosine score); a green frame marks a correct image.</p>
{"".join(cards)}
</body></html>
"""
    write_text(path, doc)
    return Path(path)
