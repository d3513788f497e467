"""The one table model of the package, rendered as markdown or as HTML.

    table = Table("toy / mlp", ["Cell", "A_std"], [["relu", Cell("91.0", ci=(0.88, 0.93))]],
                  notes=["Accuracy in %."], align=[TEXT, NUMBER])
    table.to_markdown()   # "### toy / mlp", "", "| Cell | A_std |", "|---|---:|", ...
    table.to_html()       # "<h3>toy / mlp</h3>", "<table>", ...

Markdown escapes only what breaks a table row (``|`` and line breaks); HTML escapes markup.
A cell is text or a :class:`Cell` (a 95% interval, a CSS class, a flag after the value).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

TEXT, NUMBER = "left", "right"  # column alignments: text left, numbers right


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; ``-`` for None."""
    return "-" if value is None else f"{100 * value:.1f}"


def md_text(value: Any) -> str:
    """``value`` as markdown text on one line: table pipes escaped, nothing else."""
    return str(value).replace("|", "\\|").replace("\n", " ").replace("\r", " ")


@dataclass
class Cell:
    """A table cell: its text, the 95% interval (``±`` in markdown, a tooltip in HTML), a CSS
    class, and a flag shown after the value (and its interval)."""

    text: str
    ci: tuple[float, float] | None = None
    n: int | None = None
    css: str | None = None
    flag: str | None = None

    def markdown(self) -> str:
        out = self.text
        if self.ci is not None and self.text != "-":
            out += f" ± {100 * (self.ci[1] - self.ci[0]) / 2:.1f}"
        return md_text(out + (f" {self.flag}" if self.flag else ""))

    def tooltip(self) -> str | None:
        if self.ci is None:
            return None
        n = f", n={self.n}" if self.n else ""
        return f"95% CI {pct(self.ci[0])}-{pct(self.ci[1])}%{n}"


@dataclass
class Table:
    """A titled table: ``columns`` names, ``rows`` of text or :class:`Cell` values, ``notes``
    below it, ``align`` per column (:data:`NUMBER` aligns right; :data:`TEXT`, the default,
    left) and ``level``, the heading level of the title (no heading without a title)."""

    title: str | None
    columns: list[str]
    rows: list[list[Cell | str]]
    notes: list[str] = field(default_factory=list)
    align: list[str] | None = None
    level: int = 3

    def cells(self, row: list[Cell | str]) -> list[Cell]:
        return [c if isinstance(c, Cell) else Cell(str(c)) for c in row]

    def right(self, j: int) -> bool:
        return self.align is not None and j < len(self.align) and self.align[j] == NUMBER

    def to_markdown(self) -> str:
        """The table as markdown lines joined by newlines (no trailing newline)."""
        lines = [f"{'#' * self.level} {md_text(self.title)}", ""] if self.title else []
        lines += ["| " + " | ".join(map(md_text, self.columns)) + " |",
                  "|" + "|".join("---:" if self.right(j) else "---"
                                 for j in range(len(self.columns))) + "|"]
        lines += ["| " + " | ".join(c.markdown() for c in self.cells(row)) + " |"
                  for row in self.rows]
        if self.notes:
            lines += [""] + [md_text(n) for n in self.notes]
        return "\n".join(lines)

    def to_html(self) -> str:
        """The table as HTML lines joined by newlines: heading, table, notes."""
        e = html.escape
        out = [f"<h{self.level}>{e(self.title)}</h{self.level}>"] if self.title else []
        out += ["<table>", "<thead><tr>", *(f"<th>{e(h)}</th>" for h in self.columns),
                "</tr></thead>", "<tbody>"]
        out += ["<tr>" + "".join(self._html_cell(j, c) for j, c in enumerate(self.cells(row)))
                + "</tr>" for row in self.rows]
        out += ["</tbody>", "</table>"]
        out += [f'<p class="note">{e(n)}</p>' for n in self.notes]
        return "\n".join(out)

    def _html_cell(self, j: int, c: Cell) -> str:
        e = html.escape
        classes = " ".join(filter(None, [None if self.right(j) else "text", c.css]))
        attrs = f' class="{classes}"' if classes else ""
        tip = c.tooltip()
        if tip:
            attrs += f' title="{e(tip)}"'
        return f"<td{attrs}>{e(c.text)}{' ' + e(c.flag) if c.flag else ''}</td>"
