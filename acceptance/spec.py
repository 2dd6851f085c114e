"""How a check declares itself: one ``CHECK = CheckSpec(...)`` at the top of its module.

Why in the module: the check's id, title, place in the report and artifact names then live beside the code
that earns them; acceptance/registry.py only collects the declarations, so no second list can drift.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class CheckSpec:
    id: str
    title: str
    #: place in the closeout pack's numbering (manifest, report, summary list checks in this order)
    order: int
    #: files the check always leaves in the evidence dir (text/JSON: a placeholder if it ended before writing
    #: one; a binary file, e.g. a picture, is listed only when written)
    artifacts: tuple[str, ...] = ()
    #: None = runs in ``order``; n = runs after every other check, n-th of those that run last
    run_last: int | None = None
    #: with several gateway hosts: "each" = runs once per gateway host (per-host artifacts and rows, one
    #: result); "one" = runs on the one gateway host the group var ``overhead_gateway`` names (acceptance/fleet.py)
    gateways: str = "each"

    def __post_init__(self) -> None:
        if self.gateways not in ("each", "one"):
            raise ValueError(f"check {self.id}: gateways must be 'each' or 'one', not {self.gateways!r}")

    @property
    def mark(self) -> pytest.MarkDecorator:
        """The marker the plugin recognises the check's tests by (``pytestmark = CHECK.mark``)."""
        return pytest.mark.check(self.id)
