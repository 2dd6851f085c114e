"""What a check hands the sign-off report through the ``pytest_poc1_report_section`` hook
(acceptance/hookspecs.py): a titled block of HTML and/or rows for pytest-html's environment table.

Why a hook: the report stays closed to the checks (it imports none of them) and open to each of them; a
new check with its own figures adds its section in its own module.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from markupsafe import Markup


@dataclass(frozen=True)
class ReportSection:
    #: the section's heading; empty: no visible section (e.g. only environment rows)
    title: str = ""
    #: the section's body, rendered by the check's own autoescaped template
    html: Markup = field(default_factory=Markup)
    #: rows for pytest-html's environment table, label -> text
    environment: dict[str, str] = field(default_factory=dict)
