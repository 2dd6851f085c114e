"""The one Jinja2 environment factory for HTML pages: autoescape always on, undefined names are errors.

Why one place: every HTML page (the sign-off report, a check's report section, the trend page) escapes
the same way, so text from a run (a cause, a host name) can never become markup.
"""
from __future__ import annotations

from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent / "templates"


def html_environment(*directories: Path) -> jinja2.Environment:
    """Templates from ``directories`` (default: evidence_writers/templates), autoescaped."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in directories or (TEMPLATES,)]),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


def render_html(template: str, *directories: Path, **context: object) -> str:
    return html_environment(*directories).get_template(template).render(**context)
