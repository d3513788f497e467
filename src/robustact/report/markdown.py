"""Renders a report's content blocks as markdown (figures linked from ``figures/<name>.svg``).

Text is escaped only where markdown needs it (table pipes, line breaks); nothing is HTML-escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robustact.report import blocks
from robustact.report.content import Report
from robustact.report.figures import Figure
from robustact.report.table import Table, md_text


def render_markdown(report: Report) -> str:
    """The report as markdown: each block followed by a blank line."""
    lines: list[str] = []
    for block in report.blocks:
        lines += RENDER[type(block)](block)
    return "\n".join(lines)


def code(value: Any) -> str:
    """``value`` as a markdown code span (one line)."""
    text = str(value).replace("\n", " ").replace("\r", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def inline(parts: list[blocks.Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, blocks.Code):
            out.append(code(part.text))
        elif isinstance(part, blocks.Strong) or (isinstance(part, blocks.Mark) and part.bold):
            out.append(f"**{md_text(part.text)}**")
        else:
            out.append(md_text(part.text if isinstance(part, blocks.Mark) else part))
    return "".join(out)


def _figure(figure: Figure) -> list[str]:
    caption = md_text(figure.caption)
    return [f"![{caption}](figures/{figure.name}.svg)", "", f"*{caption}*", ""]


def _checks(checks: blocks.Checks) -> list[str]:
    lines = [f"- {code(name)}: {md_text(message)}" for name, message in checks.fired]
    return lines + [""] if lines else []


RENDER: dict[type, Callable[[Any], list[str]]] = {
    blocks.Heading: lambda b: [f"{'#' * b.level} {md_text(b.text)}", ""],
    blocks.Paragraph: lambda b: [inline(b.parts), ""],
    blocks.MetaLines: lambda b: [f"- {md_text(line)}" for line in b.lines] + [""],
    blocks.BulletList: lambda b: [f"- {inline(item)}" for item in b.items] + [""],
    blocks.Checks: _checks,
    blocks.CellStatus: lambda b: [f"Status: {md_text(b.status)}; {md_text(b.detail)}.", ""],
    Table: lambda b: [b.to_markdown(), ""],
    Figure: _figure,
}
