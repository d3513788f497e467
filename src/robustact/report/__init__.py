"""Reports and every table and figure of the package: markdown, HTML and SVG from plain data.

    write_report(store, "kaf_fmnist", "runs/kaf_fmnist/report")   # report.md, report.html
"""

from robustact.report.content import Report, build_report
from robustact.report.html import render_html
from robustact.report.landscape import landscape_svg
from robustact.report.markdown import render_markdown
from robustact.report.reliability import reliability_svg, save_reliability_svg
from robustact.report.svg import panels_svg
from robustact.report.table import Cell, Table
from robustact.report.write import write_report

__all__ = ["Cell", "Report", "Table", "build_report", "landscape_svg", "panels_svg",
           "reliability_svg", "render_html", "render_markdown", "save_reliability_svg",
           "write_report"]
