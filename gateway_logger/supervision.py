"""Supervision of the writer's threads: each turn of a thread runs under a guard, so an unexpected
error ends that turn, never the thread; rows in hand go back to the spool, and a spool segment that keeps
failing is quarantined (a mixin of ``Writer``: the state it uses is made in ``Writer.__init__``)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from gateway_logger.documents import clean_text
from gateway_logger.journal import origin, say
from gateway_logger.metrics import Stats
from gateway_logger.spool import Segment, Spool


class Supervision:
    """``_supervised(where, turn)`` runs a thread's turns; ``_unexpected`` says, counts and settles."""

    ERROR_BACKOFF_MAX_S = 5.0
    #: an unexpected error this often with the same spool segment in hand: the segment is quarantined
    SUSPECT_AFTER = 3

    stats: Stats
    spool: Spool | None
    _stop: threading.Event
    _kinds_said: set[str]
    _errors_in_row: dict[str, int]  #: per thread: unexpected errors since its last good turn
    _suspects: dict[str, int]  #: spool segment name -> unexpected errors while replaying it
    _pending: list[dict[str, Any]]
    _pending_segment: Segment | None
    _pending_copied: bool
    _overflow: Callable[..., None]  # Batches
    _clear_pending: Callable[[], None]  # Writer

    def _supervised(self, where: str, turn: Callable[[], bool]) -> None:
        """Run ``turn`` until it returns False; an unexpected error ends the turn, never the loop."""
        while True:
            try:
                if not turn():
                    return
                self._errors_in_row[where] = 0
            except Exception as exc:
                self._unexpected(where, exc)
                n = self._errors_in_row[where] = self._errors_in_row[where] + 1
                # stopping: the writer gets a few more turns to drain; stop() spools whatever is left
                backoff = min(self.ERROR_BACKOFF_MAX_S, 0.05 * 2 ** n)
                if self._stop.wait(backoff) and (where != "writer" or n >= 3):
                    return

    def _unexpected(self, where: str, exc: BaseException) -> None:
        """Said once per kind (where, type, origin), counted; rows in hand are put back on disk."""
        self.stats.add("writer_errors")
        kind = f"{where} {type(exc).__name__} at {origin(exc)}"
        if kind not in self._kinds_said:
            self._kinds_said.add(kind)
            say(f"unexpected error in the {kind}: {clean_text(str(exc))[:300]} (said once per kind, counted "
                "in gateway_logger_writer_errors_total; the loop goes on)")
        if where == "writer":
            self._settle_after_error()

    def _settle_after_error(self) -> None:
        """The batch in hand when a writer turn failed: a spool segment is released (quarantined if it keeps
        coming back with errors), rows from memory go to the spool; so nothing is lost and nothing blocks."""
        segment = self._pending_segment
        if segment is not None:
            name = segment.path.name
            self._suspects[name] = self._suspects.get(name, 0) + 1
            if self._suspects[name] >= self.SUSPECT_AFTER and self.spool is not None:
                self._suspects.pop(name)
                self.spool.quarantine_whole(segment, f"{self.SUSPECT_AFTER} unexpected errors replaying it")
            else:
                Spool.release(segment)
        elif self._pending and not self._pending_copied:
            self._overflow(list(self._pending), "unexpected error")
        self._clear_pending()
