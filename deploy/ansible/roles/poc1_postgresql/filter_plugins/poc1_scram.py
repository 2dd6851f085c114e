"""SCRAM-SHA-256 verifiers for PostgreSQL roles, made on the controller: the password never reaches the
server (nor its log, nor pg_stat_statements), only the verifier (RFC 5802 / RFC 7677, PostgreSQL's format
``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``).

Idempotence: a verifier is salted, so a new one differs every run. ``password | poc1_scram_verifier(lines,
role)`` (lines: ``rolname rolpassword`` as psql prints pg_authid) returns the role's *stored* verifier when
the password still matches it (recomputed with its own salt and iterations), else a new one — a second
playbook run changes nothing, a new password is set.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

ITERATIONS = 4096  # PostgreSQL's scram_iterations default


def _keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest(), hmac.new(salted, b"Server Key", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def new_verifier(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    salt = os.urandom(16) if salt is None else salt
    stored_key, server_key = _keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def matches(password: str, verifier: str | None) -> bool:
    """Whether ``verifier`` (as pg_authid.rolpassword holds it) is one of ``password``."""
    try:
        scheme, rest = (verifier or "").split("$", 1)
        params, keys = rest.split("$", 1)
        iterations, salt = params.split(":", 1)
        stored_key, server_key = keys.split(":", 1)
        if scheme != "SCRAM-SHA-256":
            return False
        mine = _keys(password, base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(mine[0], base64.b64decode(stored_key)) and \
            hmac.compare_digest(mine[1], base64.b64decode(server_key))
    except ValueError:  # no verifier, another scheme (md5...), or a malformed one
        return False


def stored_verifier(lines: list[str], role: str) -> str | None:
    for line in lines:
        name, _, verifier = line.strip().partition(" ")
        if name == role and verifier:
            return verifier
    return None


def poc1_scram_verifier(password: str, lines: list[str] | None = None, role: str = "") -> str:
    if not password:
        raise ValueError(f"poc1_scram_verifier: no password for role {role or '?'} (set it in the vault or the "
                         "environment, or give its verifier)")
    stored = stored_verifier(lines or [], role)
    return stored if stored and matches(password, stored) else new_verifier(password)


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"poc1_scram_verifier": poc1_scram_verifier}
