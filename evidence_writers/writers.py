"""One writer per artifact kind (text, JSON, SQL result table) behind one interface.

``EvidenceWriter.write`` is final: it renders, redacts, re-checks for secrets, writes atomically and
hashes. Subclasses only decide how content becomes text (or bytes, for a binary kind such as check 6's
picture: nothing to redact, but still refused if a secret's bytes are in it), so a new kind cannot skip
redaction or the secret check.
"""
from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, final

from evidence_writers.redaction import Redactor
from tools.files import atomic_write

MAX_CELL = 80


@dataclass(frozen=True)
class Written:
    """What landed on disk: the facts the manifest records about one file."""

    path: Path
    sha256: str
    size: int
    time: str


@dataclass
class SqlResult:
    """A query and its rows, rendered like psql's aligned output."""

    title: str
    sql: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str | None = None
    truncate: bool = True


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return repr(value)


class EvidenceWriter(ABC):
    """Turns content into text; ``write`` (final) redacts and stores it."""

    kind: ClassVar[str]

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    @abstractmethod
    def render(self, content: Any) -> str | bytes:
        """The artifact's text, before redaction (bytes: a binary artifact, written as it is)."""

    @final
    def write(self, path: Path, content: Any) -> Written:
        raw = isinstance(content, (bytes, bytearray))
        rendered = self.render(content if raw else self._redactor.obj(content))
        if isinstance(rendered, (bytes, bytearray)):
            data = bytes(rendered)
            self._redactor.assert_clean(data.decode("latin-1"), where=path.name)
        else:
            text = self._redactor.text(rendered)
            self._redactor.assert_clean(text, where=path.name)
            data = text.encode("utf-8")
        atomic_write(path, data, 0o644)
        return Written(path=path, sha256=hashlib.sha256(data).hexdigest(), size=len(data), time=utc_now())


class TextWriter(EvidenceWriter):
    """Plain text: a string, or a list of lines/blocks joined by newlines."""

    kind = "text"

    def render(self, content: Any) -> str:
        if isinstance(content, str):
            text = content
        else:
            text = "\n".join(str(block) for block in content)
        return text if text.endswith("\n") else text + "\n"


class JsonWriter(EvidenceWriter):
    """Pretty JSON (dates as ISO strings), one trailing newline."""

    kind = "json"

    def render(self, content: Any) -> str:
        return json.dumps(content, indent=2, ensure_ascii=False, default=json_default) + "\n"


def _cell(value: Any, truncate: bool, redactor: Redactor | None = None) -> str:
    """One table cell; redacted before it is cut (a cut secret would no longer be recognised)."""
    if value is None:
        text = "NULL"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=json_default, separators=(",", ":"))
    elif isinstance(value, (dt.datetime, dt.date, dt.time)):
        text = value.isoformat()
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    if redactor is not None:
        text = redactor.text(text)
    return text[: MAX_CELL - 1] + "…" if truncate and len(text) > MAX_CELL else text


def render_table(result: SqlResult, redactor: Redactor | None = None) -> str:
    cells = [[_cell(v, result.truncate, redactor) for v in row] for row in result.rows]
    widths = [len(c) for c in result.columns]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = [f"-- {result.title}"]
    lines += [f"-- {ln.rstrip()}" for ln in result.sql.strip().splitlines()]
    lines.append((" " + " | ".join(c.ljust(w) for c, w in zip(result.columns, widths))).rstrip())
    lines.append("-" + "-+-".join("-" * w for w in widths) + "-")
    for row in cells:
        lines.append(" " + " | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    n = len(cells)
    lines.append(f"({n} row{'s' if n != 1 else ''})")
    if result.note:
        lines.append(result.note)
    return "\n".join(lines)


class SqlTableWriter(EvidenceWriter):
    """Query results as psql-style tables; plain strings in the list are written as notes."""

    kind = "sql"

    def render(self, content: Any) -> str:
        blocks = [content] if isinstance(content, SqlResult) else list(content)
        parts = [render_table(b, self._redactor) if isinstance(b, SqlResult) else str(b) for b in blocks]
        return "\n\n".join(parts) + "\n"


class BinaryWriter(EvidenceWriter):
    """Bytes as they are (a picture): no text to redact; ``write`` still refuses a secret's bytes."""

    kind = "binary"

    def render(self, content: Any) -> bytes:
        if not isinstance(content, (bytes, bytearray)):
            raise ValueError(f"a binary artifact needs bytes, not {type(content).__name__}")
        return bytes(content)


WRITERS: dict[str, type[EvidenceWriter]] = {
    w.kind: w for w in (TextWriter, JsonWriter, SqlTableWriter, BinaryWriter)}


def writer_for(kind: str, redactor: Redactor) -> EvidenceWriter:
    try:
        return WRITERS[kind](redactor)
    except KeyError:
        raise ValueError(f"unknown artifact kind {kind!r} (known: {', '.join(WRITERS)})") from None


@dataclass
class Document:
    """An artifact being assembled by a check; written by the bundle when the check ends.

    ``blocks`` for text/sql kinds, ``data`` for json, ``payload`` for binary. Adding content never writes:
    the footer with the check's outcome is appended at the end, so a text or JSON file always states whether
    its check passed (a binary file's outcome is in its manifest record).
    """

    name: str
    kind: str
    check: str
    blocks: list[Any] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def add(self, *blocks: Any) -> "Document":
        self.blocks.extend(blocks)
        return self

    def section(self, title: str, body: str | Sequence[str] = "") -> "Document":
        text = body if isinstance(body, str) else "\n".join(body)
        self.blocks.append(f"== {title}\n{text.rstrip()}" if text else f"== {title}")
        return self

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def content(self, outcome: str, cause: str | None) -> Any:
        status = outcome.upper() + (f": {cause}" if cause else "")
        if self.kind == "binary":
            return self.payload
        if self.kind == "json":
            return {**self.data, "check": {"id": self.check, "outcome": outcome, "cause": cause}}
        footer = f"== check {self.check}: {status}"
        return [*self.blocks, footer]
