"""The content blocks a report is made of, independent of how they are rendered.

A report is a list of blocks (:class:`Heading`, :class:`Paragraph`, :class:`MetaLines`,
:class:`BulletList`, :class:`Checks`, :class:`CellStatus`, a
:class:`robustact.report.table.Table` or a :class:`robustact.report.figures.Figure`), built
once from the store (:mod:`robustact.report.content`) and rendered by
:mod:`robustact.report.markdown` and :mod:`robustact.report.html`. Paragraphs and list items
are runs of inline pieces: plain text, :class:`Code`, :class:`Strong` or :class:`Mark`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from robustact.report.figures import Figure
from robustact.report.table import Table


@dataclass(frozen=True)
class Code:
    """Inline code: a markdown code span, an HTML ``<code>``."""

    text: str


@dataclass(frozen=True)
class Strong:
    """Strong text: markdown ``**text**``, HTML ``<strong>``."""

    text: str


@dataclass(frozen=True)
class Mark:
    """Text with a CSS class (HTML ``<span class=...>``); markdown shows it bold if ``bold``."""

    text: str
    css: str | None = None
    bold: bool = False


Inline = str | Code | Strong | Mark


@dataclass
class Heading:
    """A section heading; ``anchor`` is its HTML id."""

    text: str
    level: int
    anchor: str | None = None


@dataclass
class Paragraph:
    """A paragraph of inline pieces; ``css`` styles it in HTML."""

    parts: list[Inline]
    css: str | None = None


@dataclass
class MetaLines:
    """Lines about the report (provenance): a markdown list, HTML ``meta`` paragraphs."""

    lines: list[str]


@dataclass
class BulletList:
    """A bulleted list; each item a run of inline pieces."""

    items: list[list[Inline]]


@dataclass
class Checks:
    """Diagnostic checks as (name, message): the fired ones listed, the quiet ones folded away
    in HTML (markdown lists only the fired ones)."""

    fired: list[tuple[str, str]] = field(default_factory=list)
    quiet: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class CellStatus:
    """A cell's status and what it is (``relu, standard``); ``css`` styles the status."""

    status: str
    detail: str
    css: str | None = None


Block = Heading | Paragraph | MetaLines | BulletList | Checks | CellStatus | Table | Figure
