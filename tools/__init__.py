"""Command-line tools around the acceptance suite (``python -m tools.validate``, ``tools.regression``)."""
