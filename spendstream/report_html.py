"""The report as one self-contained HTML page: tables, and charts drawn as inline SVG (no scripts, no fetches)."""

from __future__ import annotations

from html import escape

from sinks.report import DIMENSIONS, Report, TopRow
from streams.forecast import crossing, describe

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#1d2433}
h1{font-size:1.5rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}td,th{padding:.25rem .5rem;border-bottom:1px solid #e3e6ec}
th{text-align:left;background:#f5f6f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1rem}.card{flex:1;border:1px solid #e3e6ec;border-radius:6px;padding:.75rem}
.card b{display:block;font-size:1.4rem}.up{color:#b42318}.down{color:#067647}
"""


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:,.4f}"


def _trend(row: TopRow) -> str:
    if row.trend is None:
        return "new" if row.last7_usd else ""
    change = 100 * (row.trend - 1)
    return f'<span class="{"up" if change > 0 else "down"}">{change:+.0f}%</span>'


def daily_chart(report: Report, width: int = 960, height: int = 180) -> str:
    """Spend per day over the last 30 days, as SVG bars."""
    if not report.daily:
        return "<p>No spend in the last 30 days.</p>"
    peak = max(usd for _, usd, _ in report.daily) or 1.0
    step = width / len(report.daily)
    bars = []
    for n, (day, usd, calls) in enumerate(report.daily):
        h = (height - 20) * usd / peak
        bars.append(
            f'<rect x="{n * step + 2:.1f}" y="{height - 20 - h:.1f}" width="{step - 4:.1f}" height="{h:.1f}" '
            f'fill="#3e63dd"><title>{day}: {_usd(usd)}, {calls:,} calls</title></rect>'
        )
    first, last = report.daily[0][0], report.daily[-1][0]
    labels = (
        f'<text x="0" y="{height - 4}" font-size="11">{first}</text>'
        f'<text x="{width}" y="{height - 4}" font-size="11" text-anchor="end">{last}</text>'
        f'<text x="0" y="11" font-size="11">peak {_usd(peak)}</text>'
    )
    svg = f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="spend per day">'
    return f"{svg}{''.join(bars)}{labels}</svg>"


def share_chart(rows: list[TopRow], total: float, width: int = 960) -> str:
    """This month's spend of the top keys, as horizontal SVG bars."""
    if not rows:
        return ""
    height = 22 * len(rows)
    peak = max(r.month_usd for r in rows) or 1.0
    parts = []
    for n, row in enumerate(rows):
        w = (width - 360) * row.month_usd / peak
        share = 100 * row.month_usd / total if total else 0
        parts.append(
            f'<text x="0" y="{22 * n + 15}" font-size="12">{escape(row.key or "(none)")[:40]}</text>'
            f'<rect x="280" y="{22 * n + 4}" width="{w:.1f}" height="14" fill="#8da4ef"></rect>'
            f'<text x="{285 + w:.1f}" y="{22 * n + 15}" font-size="12">{_usd(row.month_usd)} ({share:.0f}%)</text>'
        )
    return f'<svg viewBox="0 0 {width} {height}" width="100%" role="img">{"".join(parts)}</svg>'


def render_html(report: Report) -> str:
    total = report.total
    cards = "".join(
        f'<div class="card">{label}<b>{value}</b>{note}</div>'
        for label, value, note in (
            ("Today", _usd(total.today_usd), ""),
            ("This month", _usd(total.month_usd), f"{total.month_calls:,} calls"),
            ("Per 1,000 calls", _usd(total.per_1k_calls), "this month"),
            ("Per 1,000 runs", _usd(total.per_1k_runs), f"this month, {total.month_runs:,} runs"),
            ("Last 7 days", _usd(total.last7_usd), f" {_trend(total)} against the 7 before"),
        )
    )
    sections = [f"<h2>Spend per day</h2>{daily_chart(report)}"]
    if report.forecast is not None:
        sections.append(f"<p>Month-end forecast: {escape(describe(report.forecast))}</p>")
    for dimension in DIMENSIONS:
        rows = report.top.get(dimension, [])
        if not rows:
            continue
        body = "".join(
            f"<tr><td>{escape(r.key or '(none)')}</td><td class=n>{_usd(r.today_usd)}</td>"
            f"<td class=n>{_usd(r.month_usd)}</td><td class=n>{_usd(r.per_1k_calls)}</td>"
            f"<td class=n>{_usd(r.per_1k_runs)}</td>"
            f"<td class=n>{_trend(r)}</td></tr>"
            for r in rows
        )
        sections.append(
            f"<h2>Top {escape(dimension)}</h2>{share_chart(rows, total.month_usd)}"
            "<table><tr><th>key</th><th>today</th><th>this month</th><th>per 1,000 calls</th><th>per 1,000 runs</th>"
            f"<th>last 7 days vs the 7 before</th></tr>{body}</table>"
        )
    if report.budgets:
        body = "".join(
            f"<tr><td>{escape(k.scope)}</td><td class=n>{_usd(k.forecast.spent_usd)}</td>"
            f"<td class=n>{_usd(k.forecast.limit_usd or 0)}</td><td class=n>{_usd(k.forecast.projected_usd)}</td>"
            f"<td class=n>{100 * (k.forecast.share or 0):.0f}%</td><td>{crossing(k.forecast)}</td>"
            f"<td>{escape(k.action)}</td></tr>"
            for k in report.budgets
        )
        sections.append(
            "<h2>Monthly budgets: month-end forecast</h2><table><tr><th>scope</th><th>spent</th><th>limit</th>"
            f"<th>projected</th><th>of limit</th><th>the budget</th><th>action</th></tr>{body}</table>"
        )
    if report.outcomes:
        body = "".join(
            f"<tr><td>{escape(o)}</td><td class=n>{n:,}</td><td class=n>{_usd(usd)}</td>"
            f"<td class=n>{_usd(per)}</td></tr>"
            for o, n, usd, per in report.outcomes
        )
        sections.append(
            "<h2>Cost per outcome (last 7 days)</h2><table><tr><th>outcome</th><th>outcomes</th>"
            f"<th>spend of their requests</th><th>per outcome</th></tr>{body}</table>"
        )
    if report.agents:
        body = "".join(
            f"<tr><td>{escape(w)}</td><td>{escape(a or '(none)')}</td><td class=n>{_usd(usd)}</td>"
            f"<td class=n>{_usd(per)}</td><td class=n>{100 * share:.0f}%</td></tr>"
            for w, a, _, _, usd, per, share in report.agents
        )
        sections.append(
            "<h2>Agents per workflow (last 7 days)</h2><table><tr><th>workflow</th><th>agent</th><th>spend</th>"
            f"<th>per request</th><th>share</th></tr>{body}</table>"
        )
    title = f"spendstream report, {report.day} ({report.data_mode} calls)"
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1><div class=cards>{cards}</div>"
        f"{''.join(sections)}"
        f"<p><small>Generated {report.generated_at:%Y-%m-%d %H:%M} UTC from the rollups.</small></p>"
        "</body></html>"
    )
