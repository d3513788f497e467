"""Reports rendered from a results store: markdown and self-contained HTML with SVG figures."""

from robustact.report.render import build_report, render_html, render_markdown, write_report
from robustact.report.svg import landscape_svg, panels_svg

__all__ = ["build_report", "landscape_svg", "panels_svg", "render_html", "render_markdown",
           "write_report"]
