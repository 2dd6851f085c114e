"""The one redaction function every evidence byte passes through.

Why one place: an evidence bundle is shared with people who must not see the master key, the database
passwords or a bearer token. Each writer calls ``Redactor.text`` on its final rendered text and then
``assert_clean`` (see writers.py), so no artifact can reach the disk without it.

Why ``clip``: a value cut before it is redacted can keep a secret's first characters, which no later
redaction recognises. Everything that shortens a text for evidence (cells, one-line causes, journal
tails) goes through ``clip``, which redacts with the run's redactor (``use``) first, then cuts.
"""
from __future__ import annotations

import json
import re
from typing import Any, Iterable
from urllib.parse import quote

MARK = "***"

#: "Bearer <token>" anywhere (headers, curl lines, logs), but not a shell variable like ${NAME}
_BEARER = re.compile(r"(?i)(\bbearer\s+)(?!\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)([^\s\"',;}\]]+)")
#: the password of any URL with credentials (postgresql://user:pw@host)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s\"']+:)([^@\s/\"']+)(@)")
#: OpenAI/LiteLLM style keys (sk-...), whoever's they are
_SK_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")


class SecretLeak(RuntimeError):
    """Raised if a known secret survived redaction (a bug: nothing is written then)."""


class Redactor:
    """Knows every secret value of the run and removes them, and token-shaped strings, from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._variants: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        """Learn one more secret (plus its JSON-escaped and URL-quoted spellings)."""
        if not secret:
            return
        for v in {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}:
            if v and v not in self._variants:
                self._variants.append(v)
        self._variants.sort(key=len, reverse=True)  # longest first: no partial leftovers

    def text(self, text: str) -> str:
        for v in self._variants:
            text = text.replace(v, MARK)
        text = _BEARER.sub(rf"\g<1>{MARK}", text)
        text = _URL_PASSWORD.sub(rf"\g<1>{MARK}\g<3>", text)
        return _SK_KEY.sub(f"sk-{MARK}", text)

    def obj(self, value: Any) -> Any:
        """The same for a JSON-like structure (keys and string values), before it is serialised."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.obj(k) if isinstance(k, str) else k: self.obj(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.obj(v) for v in value]
        return value

    def leaks(self, text: str) -> list[str]:
        """Which known secrets (by length only, never by value) are still in ``text``."""
        return [f"<secret of {len(v)} chars>" for v in self._variants if v in text]

    def assert_clean(self, text: str, where: str = "artifact") -> None:
        found = self.leaks(text)
        if found:
            raise SecretLeak(f"{where}: {len(found)} secret value(s) survived redaction; nothing written")


_ACTIVE: Redactor = Redactor()


def use(redactor: Redactor) -> None:
    """Make ``redactor`` the one ``clip`` applies (the run's: set when the run context is made)."""
    global _ACTIVE
    _ACTIVE = redactor


def active() -> Redactor:
    return _ACTIVE


def clip(text: str, limit: int, *, keep: str = "head", mark: str = "…") -> str:
    """``text`` redacted, then cut to ``limit`` characters (``keep="tail"``: its end) with ``mark``."""
    text = _ACTIVE.text(text)
    if len(text) <= limit:
        return text
    if keep == "tail":
        return mark + text[len(text) - limit + len(mark):]
    return text[: limit - len(mark)] + mark
