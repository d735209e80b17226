"""Tables and plots -> report.md and a self-contained report.html (PNGs embedded, no scripts or links),
so the report reads offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html

from crossderm.report.plots import Plot
from crossderm.report.runs import Run
from crossderm.report.tables import Table

TITLE = "Cross-dataset report"
FIGURES = "figures"  # the PNGs' sub-folder, next to report.md
HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: right; }
th, td.text { text-align: left; }
tr.paper td { color: #666; font-style: italic; }
p.note { font-size: 0.85em; color: #555; max-width: 60em; }
figure { margin: 1em 0; } img { max-width: 100%; }
"""


def intro(runs: list[Run]) -> list[str]:
    """One bullet per run, and which runs have no training curves (no history.csv)."""
    no_curves = [run.name for run in runs if not run.histories]
    lines = [f"- {run.name}: {run.description or 'no description'} (`{run.run_dir}`)" for run in runs]
    if no_curves:
        lines.append(f"- no fold_<k>/history.csv, so no training curves: {', '.join(no_curves)}")
    return lines


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(runs: list[Run], tables: list[Table], plots: list[Plot]) -> str:
    lines = [f"# {TITLE}", "", *intro(runs)]
    for table in tables:
        lines += ["", f"## {table.title}"]
        if table.header:
            lines += ["", "| " + " | ".join(map(_md_cell, table.header)) + " |"]
            lines.append("|" + ":--|" * table.text_columns + "--:|" * (len(table.header) - table.text_columns))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in [*table.rows, *table.context_rows]]
        if table.note:
            lines += ["", table.note]
    lines += ["", "## Figures"]
    for plot in plots:
        lines += ["", f"![{plot.caption}]({FIGURES}/{plot.filename})", "", plot.caption]
    return "\n".join(lines) + "\n"


def _html_table(table: Table) -> list[str]:
    esc = html.escape
    parts = [f"<h2>{esc(table.title)}</h2>"]
    if table.header:
        parts.append("<table><thead><tr>" + "".join(f"<th>{esc(cell)}</th>" for cell in table.header) + "</tr></thead>")
        parts.append("<tbody>")
        for css, rows in (("", table.rows), (' class="paper"', table.context_rows)):
            for row in rows:
                cells = (
                    f'<td class="text">{esc(cell)}</td>' if i < table.text_columns else f"<td>{esc(cell)}</td>"
                    for i, cell in enumerate(row)
                )
                parts.append(f"<tr{css}>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    if table.note:
        parts.append(f'<p class="note">{esc(table.note)}</p>')
    return parts


def render_html(runs: list[Run], tables: list[Table], plots: list[Plot]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{TITLE}</title>',
        f"<style>{HTML_STYLE}</style></head><body>",
        f"<h1>{TITLE}</h1>",
        "<ul>" + "".join(f"<li>{esc(line.removeprefix('- '))}</li>" for line in intro(runs)) + "</ul>",
    ]
    for table in tables:
        parts += _html_table(table)
    parts.append("<h2>Figures</h2>")
    for plot in plots:
        data = base64.b64encode(plot.png).decode("ascii")
        parts.append(
            f'<figure><img alt="{esc(plot.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(plot.caption)}</figcaption></figure>"
        )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
