"""The lab's one exception: a failure that is reported as one line naming the host or step."""
from __future__ import annotations


class LabError(RuntimeError):
    """A lab step failed; ``str(exc)`` is the one-line cause shown to the user."""
