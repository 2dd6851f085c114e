#!/usr/bin/env python3
"""The one canonical schema of the gateway's request/response log, and the tool that creates and
validates it on a live PostgreSQL.

Everything else in this repository — the gateway logger, the acceptance checks, the lab — imports the
models and helpers from here, so the schema and its SQL exist exactly once.

    python db_init.py create   --url URL    # idempotent
    python db_init.py validate --url URL    # exit 0 = live schema matches the models

The URL may instead come from the environment variable ``POC1_DB_URL``. Exit codes: 0 ok, 1 schema
drift (a readable list is printed), 2 the database could not be reached (one-line cause, password
masked).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    String,
    create_engine,
    func,
    inspect,
    make_url,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

URL_ENV = "POC1_DB_URL"
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5000

EXIT_OK, EXIT_DRIFT, EXIT_UNREACHABLE = 0, 1, 2
CALL_ID_MAX = 256
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: alembic's bookkeeping table: not part of the models, never drift
VERSION_TABLE = "alembic_version"

#: JSON on any database, JSONB on PostgreSQL (indexable, compact, rejects NUL — see the logger).
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_name)s"})


class Request(Base):
    """One call that reached the gateway, successful or not (request_id = LiteLLM's call id)."""

    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
    #: the gateway's own id of the HTTP request (the logger's, one per request: no client value can
    #: merge, drop or overwrite another call's row); returned to the client as ``x-poc1-request-id``
    request_id: Mapped[str] = mapped_column(String(128), unique=True, index=True, nullable=False)
    #: LiteLLM's call id (``x-litellm-call-id``; a client may send its own, so not unique). 256 is the
    #: longest id LiteLLM accepts from a client (longer ones it replaces with a uuid)
    call_id: Mapped[str] = mapped_column(String(CALL_ID_MAX), index=True, nullable=False)
    route: Mapped[str | None] = mapped_column(String(255))
    model: Mapped[str | None] = mapped_column(String(255), index=True)
    payload: Mapped[Any | None] = mapped_column(JsonDoc)
    status_code: Mapped[int] = mapped_column(Integer, nullable=False)
    user_id: Mapped[str | None] = mapped_column(String(255))
    #: never the raw key: LiteLLM's key hash, or a fixed marker when there was no valid key
    api_key: Mapped[str | None] = mapped_column(String(128))
    start_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    responses: Mapped[list["Response"]] = relationship(
        back_populates="request", cascade="all, delete-orphan", passive_deletes=True
    )


class Response(Base):
    """What the gateway answered for one request (exactly one per request)."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
    request_id_fk: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False, index=True
    )
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[Any | None] = mapped_column(JsonDoc)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[str | None] = mapped_column(String(64))
    response_model: Mapped[str | None] = mapped_column(String(255))

    request: Mapped[Request] = relationship(back_populates="responses")


# --------------------------------------------------------------------------------------------------
# Connection helpers shared by the logger and the acceptance suite


def mask_url(url: str | URL) -> str:
    """The URL as it may be printed: password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even parseable: print nothing of it
        return "<unparseable database URL>"


def scrub(text: str, url: str | URL | None) -> str:
    """Remove the URL's password from any message (drivers sometimes echo the DSN)."""
    if url is None:
        return text
    try:
        password = make_url(url).password
    except Exception:
        return text
    return text.replace(password, "***") if password else text


def make_engine(url: str | URL, *, read_only: bool = False, **kwargs: Any) -> Engine:
    """An engine with bounded connect and statement timeouts, pre-ping and recycle.

    ``read_only`` makes every transaction READ ONLY on the server, so a check cannot write.
    """
    url = make_url(url)
    connect_args: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql":
        options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
        if read_only:
            options += " -c default_transaction_read_only=on"
        connect_args = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": options,
            "application_name": kwargs.pop("application_name", "poc1"),
        }
    connect_args.update(kwargs.pop("connect_args", {}))
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_recycle", 300)
    return create_engine(url, connect_args=connect_args, **kwargs)


def one_line_cause(exc: BaseException, url: str | URL | None = None) -> str:
    """A driver error reduced to its first meaningful line, password removed."""
    orig = getattr(exc, "orig", None) or exc
    lines = [ln.strip() for ln in str(orig).splitlines() if ln.strip()]
    text = lines[0] if lines else type(orig).__name__
    return scrub(text, url)


# --------------------------------------------------------------------------------------------------
# create / validate


def _alembic(connection: Any) -> Any:
    """Alembic's config for ``migrations/`` on an open connection (no alembic.ini needed)."""
    from alembic.config import Config  # noqa: PLC0415  (only create/validate need alembic)

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    return str(ScriptDirectory(str(MIGRATIONS)).get_current_head())


def live_revision(connection: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    return MigrationContext.configure(connection).get_current_revision()


#: the schema of the first POC-1 databases (made by create_all, before alembic): the migrations' base
BASELINE_REVISION = "0001"


def create(url: str | URL) -> list[str]:
    """Create the schema on an empty database, or migrate an existing POC-1 database to the models.

    An empty database gets ``create_all`` and is stamped at the newest revision; a database made
    before alembic came in (no version table) is the baseline; then alembic upgrades to head.
    Returns the revisions applied (empty when already current)."""
    from alembic import command  # noqa: PLC0415

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            cfg = _alembic(conn)
            if not tables & set(Base.metadata.tables):
                Base.metadata.create_all(conn)
                command.stamp(cfg, "head")
                return []
            before = live_revision(conn)
            if before is None:
                command.stamp(cfg, BASELINE_REVISION)
                before = BASELINE_REVISION
            command.upgrade(cfg, "head")
            after = live_revision(conn)
            return [] if after == before else [f"{before} -> {after}"]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Drift:
    table: str
    what: str

    def __str__(self) -> str:
        return f"{self.table}: {self.what}"


def _index_key(columns: Iterable[str | None], unique: bool) -> tuple[tuple[str, ...], bool]:
    return tuple(c or "" for c in columns), bool(unique)


def compare(engine: Engine) -> list[Drift]:
    """Every difference between the models and the live database, found with SQLAlchemy's inspector."""
    insp = inspect(engine)
    dialect = engine.dialect
    drifts: list[Drift] = []
    live_tables = set(insp.get_table_names()) - {VERSION_TABLE}
    if live_tables & set(Base.metadata.tables):
        with engine.connect() as conn:
            have = live_revision(conn)
        want = head_revision()
        if have != want:
            drifts.append(Drift(VERSION_TABLE, f"schema revision is {have or 'none (made before migrations)'}, "
                                               f"expected {want}: run db_init.py create to migrate"))
    for name in sorted(live_tables - set(Base.metadata.tables)):
        drifts.append(Drift(name, "extra table (not in the models)"))
    for table in Base.metadata.sorted_tables:
        if table.name not in live_tables:
            drifts.append(Drift(table.name, "missing table"))
            continue
        live_cols = {c["name"]: c for c in insp.get_columns(table.name)}
        for col in table.columns:
            live = live_cols.get(col.name)
            if live is None:
                drifts.append(Drift(table.name, f"missing column {col.name}"))
                continue
            want = col.type.compile(dialect=dialect)
            have = live["type"].compile(dialect=dialect)
            if want != have:
                drifts.append(Drift(table.name, f"column {col.name} type is {have}, expected {want}"))
            if bool(live["nullable"]) != bool(col.nullable):
                expected = "NULL" if col.nullable else "NOT NULL"
                drifts.append(Drift(table.name, f"column {col.name} nullability differs, expected {expected}"))
        for extra in sorted(set(live_cols) - {c.name for c in table.columns}):
            drifts.append(Drift(table.name, f"extra column {extra}"))

        live_pk = insp.get_pk_constraint(table.name).get("constrained_columns") or []
        if list(live_pk) != [c.name for c in table.primary_key.columns]:
            drifts.append(Drift(table.name, f"primary key is {live_pk}, expected {[c.name for c in table.primary_key.columns]}"))

        live_indexes = {_index_key(ix["column_names"], ix["unique"]) for ix in insp.get_indexes(table.name)}
        for uc in insp.get_unique_constraints(table.name):
            live_indexes.add(_index_key(uc["column_names"], True))
        for ix in table.indexes:
            key = _index_key((c.name for c in ix.columns), bool(ix.unique))
            if key not in live_indexes:
                kind = "unique index" if ix.unique else "index"
                drifts.append(Drift(table.name, f"missing {kind} on ({', '.join(key[0])})"))

        live_fks = insp.get_foreign_keys(table.name)
        for fk in table.foreign_key_constraints:
            cols = [c.name for c in fk.columns]
            match = [
                lf for lf in live_fks
                if lf["constrained_columns"] == cols and lf["referred_table"] == fk.referred_table.name
            ]
            target = f"{fk.referred_table.name}({', '.join(e.column.name for e in fk.elements)})"
            if not match:
                drifts.append(Drift(table.name, f"missing foreign key ({', '.join(cols)}) -> {target}"))
                continue
            want_ondelete = (fk.ondelete or "").upper()
            have_ondelete = ((match[0].get("options") or {}).get("ondelete") or "NO ACTION").upper()
            if want_ondelete and have_ondelete != want_ondelete:
                drifts.append(Drift(
                    table.name,
                    f"foreign key ({', '.join(cols)}) -> {target} is ON DELETE {have_ondelete}, expected ON DELETE {want_ondelete}",
                ))
    return drifts


def validate(url: str | URL) -> list[Drift]:
    engine = make_engine(url)
    try:
        return compare(engine)
    finally:
        engine.dispose()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("create", "create the tables and indexes (idempotent)"),
                        ("validate", "compare the live schema with the models")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--url", default=os.environ.get(URL_ENV),
                       help=f"SQLAlchemy database URL (default: ${URL_ENV})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.url:
        print(f"db_init: no database URL: pass --url or set {URL_ENV}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        target = mask_url(args.url)
        make_url(args.url)
    except Exception:
        print("db_init: the database URL is not a valid SQLAlchemy URL", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        if args.command == "create":
            migrated = create(args.url)
            for step in migrated:
                print(f"db_init: migrated {target}: {step}")
            drifts = validate(args.url)
            if drifts:
                print(f"db_init: created, but {target} still differs from the models:", file=sys.stderr)
                for d in drifts:
                    print(f"  - {d}", file=sys.stderr)
                return EXIT_DRIFT
            print(f"db_init: schema present on {target}")
            return EXIT_OK
        drifts = validate(args.url)
    except SQLAlchemyError as exc:
        print(f"db_init: cannot reach {target}: {one_line_cause(exc, args.url)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:  # e.g. a missing driver: still one line, still masked
        print(f"db_init: cannot reach {target}: {type(exc).__name__}: {one_line_cause(exc, args.url)}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    if drifts:
        print(f"db_init: schema drift on {target} ({len(drifts)}):")
        for d in drifts:
            print(f"  - {d}")
        return EXIT_DRIFT
    print(f"db_init: schema on {target} matches the models ({len(Base.metadata.tables)} tables)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
