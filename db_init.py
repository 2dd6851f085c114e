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

``create`` migrates an existing POC-1 database in place with alembic (``migrations/``). ``validate``
lets alembic find the drift (``compare_metadata`` with the options in ``COMPARE_OPTS``, the same ones
``alembic revision --autogenerate`` uses): a revision behind head, tables, columns, types,
nullability, server defaults, indexes (missing and extra), unique constraints, foreign keys with
their options (ON DELETE...). Each difference is one line ``table: what``; primary keys, which
alembic does not compare, are checked with the inspector.
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
    """One difference between the models and the live database, printed as one line."""

    table: str
    what: str

    def __str__(self) -> str:
        return f"{self.table}: {self.what}"


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """alembic's reflection filter: every table but alembic's own (an extra table is drift), and inside
    tables only the models' (only the default schema is reflected: alembic's include_schemas is off)."""
    if type_ == "table":
        return name != VERSION_TABLE
    if type_ == "schema":
        return name is None
    return parent_names.get("table_name") in Base.metadata.tables


#: how ``validate`` and ``alembic revision --autogenerate`` (migrations/env.py) compare: the same way
COMPARE_OPTS: dict[str, Any] = {
    "compare_type": True,
    "compare_server_default": True,
    "include_name": include_name,
    "version_table": VERSION_TABLE,
}


def _names(columns: Iterable[Any]) -> str:
    return ", ".join(getattr(c, "name", None) or str(c) for c in columns)


def _index_text(ix: Any) -> str:
    return f"{'unique ' if ix.unique else ''}index {ix.name} on ({_names(ix.expressions)})"


def _fk_text(fk: Any) -> str:
    """``(cols) -> table(cols)`` from the target names: a reflected FK's referred table is not in its
    stub metadata, so ``fk.referred_table`` cannot be used."""
    targets = [e.target_fullname.rsplit(".", 1) for e in fk.elements]
    return f"({', '.join(fk.column_keys)}) -> {targets[0][0]}({', '.join(t[1] for t in targets)})"


def _fk_options(fk: Any) -> dict[str, str]:
    return {
        "ondelete": f"ON DELETE {(fk.ondelete or 'NO ACTION').upper()}",
        "onupdate": f"ON UPDATE {(fk.onupdate or 'NO ACTION').upper()}",
        "deferrable": "DEFERRABLE" if fk.deferrable else "NOT DEFERRABLE",
        "initially": f"INITIALLY {(fk.initially or 'IMMEDIATE').upper()}",
    }


def _default_text(default: Any, dialect: Any) -> str:
    arg = getattr(default, "arg", default)
    if arg is None:
        return "none"
    if isinstance(arg, str):
        return repr(arg)
    return str(getattr(arg, "text", None) or arg.compile(dialect=dialect))


def _column_drift(diff: tuple[Any, ...], dialect: Any) -> Drift:
    """A ``modify_*`` diff: (op, schema, table, column, existing, live value, model value)."""
    op, _schema, table, column, _existing, live, want = diff
    if op == "modify_type":
        what = f"type is {live.compile(dialect=dialect)}, expected {want.compile(dialect=dialect)}"
    elif op == "modify_nullable":
        null = {True: "NULL", False: "NOT NULL"}
        what = f"nullability differs: is {null[bool(live)]}, expected {null[bool(want)]}"
    elif op == "modify_default":
        what = f"server default is {_default_text(live, dialect)}, expected {_default_text(want, dialect)}"
    else:  # e.g. modify_comment
        what = f"{op.removeprefix('modify_')} is {live!r}, expected {want!r}"
    return Drift(table, f"column {column} {what}")


def _table_of(diff: tuple[Any, ...]) -> str:
    """The table a diff is about: named in column diffs, the object itself in table diffs."""
    op = diff[0]
    if op.startswith("modify_") or op.endswith("_column"):
        return str(diff[2])
    if op.endswith(("_table", "_table_comment")):
        return str(diff[1].name)
    return str(diff[-1].table.name)


def _object_drift(diff: tuple[Any, ...]) -> Drift:
    """An add_*/remove_* diff: ``add`` = in the models, missing live; ``remove`` = live only."""
    op, obj, table = diff[0], diff[-1], _table_of(diff)
    state = "missing" if op.startswith("add_") else "extra"
    kind = op.split("_", 1)[1]
    if kind == "table":
        what = "missing table" if state == "missing" else "extra table (not in the models)"
    elif kind == "column":
        what = f"{state} column {obj.name}"
    elif kind == "index":
        what = f"{state} {_index_text(obj)}"
    elif kind == "fk":
        what = f"{state} foreign key {_fk_text(obj)}"
    elif kind == "constraint":
        label = obj.__visit_name__.replace("_", " ")
        what = f"{state} {label} {obj.name or '(unnamed)'} on ({_names(obj.columns)})"
    elif kind == "table_comment":  # add: (op, model table, live comment); remove: (op, stub table)
        what = (f"table comment is {diff[2]!r}, expected {diff[1].comment!r}" if state == "missing"
                else "extra table comment (the models have none)")
    else:  # a kind a later alembic may report: still one line naming the table
        what = op.replace("_", " ")
    return Drift(table, what)


def _changed_drift(live: Any, want: Any) -> Drift:
    """One line for an object alembic reports as removed and re-added (same index name, or an FK on
    the same columns and target whose options differ)."""
    if live.__visit_name__ == "index":
        def shape(ix: Any) -> str:
            return f"{'unique' if ix.unique else 'not unique'} on ({_names(ix.expressions)})"
        return Drift(live.table.name, f"index {live.name} is {shape(live)}, expected {shape(want)}")
    have, expected = _fk_options(live), _fk_options(want)
    changed = [k for k in have if have[k] != expected[k]] or list(have)
    return Drift(live.table.name, f"foreign key {_fk_text(want)} is {', '.join(have[k] for k in changed)}, "
                                  f"expected {', '.join(expected[k] for k in changed)}")


def _pair_key(diff: tuple[Any, ...]) -> tuple[str, ...] | None:
    op, obj = diff[0], diff[-1]
    if op in ("add_index", "remove_index"):
        return ("index", obj.table.name, obj.name)
    if op in ("add_fk", "remove_fk"):
        return ("fk", obj.table.name, _fk_text(obj))
    return None


def drift_lines(diffs: Iterable[Any], dialect: Any) -> list[Drift]:
    """alembic's diffs (``compare_metadata``) as drift lines: one per diff, a remove+add pair of the
    same index or FK as one "is …, expected …" line, nothing more for the parts of a missing table."""
    flat = [d for diff in diffs for d in (diff if isinstance(diff, list) else [diff])]
    missing_tables = {d[1].name for d in flat if d[0] == "add_table"}
    removed = {key: d[-1] for d in flat if d[0].startswith("remove_") and (key := _pair_key(d))}
    added = {key: d[-1] for d in flat if d[0].startswith("add_") and (key := _pair_key(d))}
    drifts: list[Drift] = []
    for d in flat:
        key = _pair_key(d)
        if d[0].startswith("modify_"):
            drifts.append(_column_drift(d, dialect))
        elif key in removed and key in added:
            if d[0].startswith("add_"):
                drifts.append(_changed_drift(removed[key], added[key]))
        elif d[0] == "add_table" or _table_of(d) not in missing_tables:
            drifts.append(_object_drift(d))
    return drifts


def _primary_key_drift(insp: Any, live_tables: set[str]) -> list[Drift]:
    """alembic's autogenerate does not compare primary keys (a documented limitation, confirmed by
    test_dropped_primary_key_is_named), so they are compared here with the inspector."""
    drifts = []
    for table in Base.metadata.sorted_tables:
        if table.name in live_tables:
            have = insp.get_pk_constraint(table.name).get("constrained_columns") or []
            want = [c.name for c in table.primary_key.columns]
            if list(have) != want:
                drifts.append(Drift(table.name, f"primary key is {have}, expected {want}"))
    return drifts


def compare(engine: Engine) -> list[Drift]:
    """Every difference between the models and the live database: the migration revision, then what
    alembic's ``compare_metadata`` finds (tables, columns, types, nullability, server defaults,
    indexes, unique constraints, FKs with their ON DELETE), then primary keys."""
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    drifts: list[Drift] = []
    with engine.connect() as conn:
        insp = inspect(conn)
        live_tables = set(insp.get_table_names())
        have, want = live_revision(conn), head_revision()
        if live_tables & set(Base.metadata.tables) and have != want:
            have = have or "none (made before migrations)"
            drifts.append(Drift(VERSION_TABLE, f"schema revision is {have}, expected {want}: "
                                               "run db_init.py create to migrate"))
        context = MigrationContext.configure(conn, opts=COMPARE_OPTS)
        drifts += drift_lines(compare_metadata(context, Base.metadata), engine.dialect)
        drifts += _primary_key_drift(insp, live_tables)
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
