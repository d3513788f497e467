"""Renders a report's content blocks as one self-contained HTML page (inline CSS and SVG)."""

from __future__ import annotations

from collections.abc import Callable
from html import escape as e
from typing import Any

from robustact.report import blocks
from robustact.report.content import Report
from robustact.report.figures import Figure
from robustact.report.table import Table

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd;
       padding-bottom: 0.2em; margin-top: 2em; } h3 { margin-top: 1.5em; }
.meta { color: #555; margin: 0.1em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
td[title] { cursor: help; text-decoration: underline dotted #999; }
.ok { color: #1a7f37; } .warn { color: #b42318; font-weight: 600; }
.failed { color: #b42318; } .note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
figure svg { max-width: 100%; height: auto; }
ul.checks li { margin: 0.2em 0; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG)."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(report.title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<main>"]
    for block in report.blocks:
        out += RENDER[type(block)](block)
    out += ["</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def _class(css: str | None) -> str:
    return f' class="{css}"' if css else ""


def inline(parts: list[blocks.Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, blocks.Code):
            out.append(f"<code>{e(part.text)}</code>")
        elif isinstance(part, blocks.Strong):
            out.append(f"<strong>{e(part.text)}</strong>")
        elif isinstance(part, blocks.Mark):
            out.append(f"<span{_class(part.css)}>{e(part.text)}</span>")
        else:
            out.append(e(part))
    return "".join(out)


def _heading(b: blocks.Heading) -> list[str]:
    anchor = f' id="{e(b.anchor)}"' if b.anchor else ""
    return [f"<h{b.level}{anchor}>{e(b.text)}</h{b.level}>"]


def _checks(checks: blocks.Checks) -> list[str]:
    def items(pairs: list[tuple[str, str]]) -> list[str]:
        return [f"<li><code>{e(name)}</code>: {e(message)}</li>" for name, message in pairs]

    out = ['<ul class="checks">', *items(checks.fired), "</ul>"] if checks.fired else []
    if checks.quiet:
        out += ['<details><summary>Checks that did not fire</summary><ul class="checks">',
                *items(checks.quiet), "</ul></details>"]
    return out


def _figure(figure: Figure) -> list[str]:
    return [f'<figure id="fig-{e(figure.name)}">', figure.svg.strip(),
            f"<figcaption>{e(figure.caption)}</figcaption>", "</figure>"]


RENDER: dict[type, Callable[[Any], list[str]]] = {
    blocks.Heading: _heading,
    blocks.Paragraph: lambda b: [f"<p{_class(b.css)}>{inline(b.parts)}</p>"],
    blocks.MetaLines: lambda b: [f'<p class="meta">{e(line)}</p>' for line in b.lines],
    blocks.BulletList: lambda b: ["<ul>", *(f"<li>{inline(i)}</li>" for i in b.items), "</ul>"],
    blocks.Checks: _checks,
    blocks.CellStatus: lambda b: [
        f"<p><span{_class(b.css)}>{e(b.status)}</span>; {e(b.detail)}.</p>"],
    Table: lambda b: [b.to_html()],
    Figure: _figure,
}
