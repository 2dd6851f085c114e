#!/usr/bin/env python3
"""The one canonical schema of the gateway's request/response log, and the tool that creates and
validates it on a live PostgreSQL.

Everything else in this repository — the gateway logger, the acceptance checks, the lab — imports the
models and helpers from here, so the schema and its SQL exist exactly once.

    python db_init.py create   --url URL                      # idempotent
    python db_init.py create   --partition=daily --url URL    # a new database, partitioned (opt-in)
    python db_init.py validate --url URL                      # exit 0 = live schema matches the models
    python db_init.py prune    --older-than 30d --url URL     # partitioned only: drop old partitions

The URL may instead come from the environment variable ``POC1_DB_URL``. Exit codes: 0 ok, 1 schema
drift (a readable list is printed), 2 the database could not be reached (one-line cause, password
masked), 3 refused (nothing changed: prune on the plain layout, ``--partition`` on a plain database or
one of the other period, a bad ``--older-than``).

``create`` migrates an existing POC-1 database in place with alembic (``migrations/``). ``validate``
lets alembic find the drift (``compare_metadata`` with the options in ``COMPARE_OPTS``, the same ones
``alembic revision --autogenerate`` uses): a revision behind head, tables, columns, types,
nullability, server defaults, indexes (missing and extra), unique constraints, foreign keys with
their options (ON DELETE...). Each difference is one line ``table: what``; primary keys, which
alembic does not compare, are checked with the inspector.

The partitioned layout (docs/PARTITIONING.md) is ``PARTITIONED``: the same tables RANGE-partitioned on
the request's time, keys made composite with it, a DEFAULT partition per table and the current period
plus ``AHEAD`` (7 days, or 2 months). ``create`` on it adds the periods ahead it lacks (run it daily);
``validate`` compares its parent tables the same way (the partitions left out of alembic's view), then
the partitions: default present, the periods ahead, bounds, both tables' periods alike; rows in a
default partition are a warning. ``prune`` detaches and drops the partitions whose whole period is older
than the age, responses before requests: no row is deleted one by one.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    column,
    create_engine,
    func,
    inspect,
    make_url,
    select,
    table,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

URL_ENV = "POC1_DB_URL"
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5000

EXIT_OK, EXIT_DRIFT, EXIT_UNREACHABLE, EXIT_REFUSED = 0, 1, 2, 3
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
# The partitioned layout (opt-in, issue 16: ``create --partition=daily|monthly``)
#
# The same tables and columns as the models, declaratively RANGE-partitioned on the request's time, so
# old rows go by dropping whole partitions. PostgreSQL wants the partition key in every unique key, so
# the keys become composite: requests PK (id, created_at) and UNIQUE (request_id, created_at);
# responses carry their request's created_at (``request_created_at``, their partition key: a response
# lives in its request's period), PK (id, request_created_at), and each responses partition an FK
# (request_id_fk, request_created_at) -> its period's requests partition (id, created_at) ON DELETE
# CASCADE (``FK_COLUMNS``: why not on the parents). On this layout the logger sets requests.created_at
# itself, from the time in the request's id (``gateway_logger.bulk.request_time``), so a replay meets
# its row; responses.created_at stays the writing transaction's now().

PERIODS = ("daily", "monthly")
#: periods made ahead of the current one: ``create`` run daily (a timer) keeps them ahead
AHEAD = {"daily": 7, "monthly": 2}
#: each table's partition key
PARTITION_KEY = {"requests": "created_at", "responses": "request_created_at"}
#: the safety net: a row whose time has no partition lands here (never lost), ``validate`` warns
DEFAULT_SUFFIX = "_default"
_NAME_FORMAT = {"daily": "%Y%m%d", "monthly": "%Y%m"}
_NAME_RE = {"daily": re.compile(r"_p(\d{8})$"), "monthly": re.compile(r"_p(\d{6})$")}


def _partitioned_metadata() -> MetaData:
    """The models' tables with composite keys and ``PARTITION BY RANGE``: built from the models, so the
    columns, types and defaults exist once."""
    md = MetaData(naming_convention=Base.metadata.naming_convention)
    for plain in (Request.__table__, Response.__table__):
        key = PARTITION_KEY[plain.name]
        cols = []
        for c in plain.columns:
            cols.append(Column(c.name, c.type, nullable=c.nullable and not c.primary_key,
                               server_default=c.server_default.arg if c.server_default is not None else None,
                               autoincrement=c.name == "id"))
            if c.name == "request_id_fk":
                cols.append(Column(key, DateTime(timezone=True), nullable=False))
        extra: list[Any] = [PrimaryKeyConstraint("id", key, name=f"{plain.name}_pkey")]
        for ix in plain.indexes:  # the models' indexes; a unique one, and the FK's, get the key too
            names = [c.name for c in ix.columns]
            if ix.unique or names == ["request_id_fk"]:
                names.append(key)
            extra.append(Index(ix.name, *names, unique=ix.unique))
        Table(plain.name, md, *cols, *extra, postgresql_partition_by=f"RANGE ({key})")
    return md


#: the foreign key of every responses partition, to its period's requests partition (``partition_fk``).
#: Not one on the parents: detaching a partition of a referenced parent makes PostgreSQL scan every
#: partition of the referencing table (measured: prune then read all of responses, holding the lock on
#: requests); a request and its responses share a period, so the pairs enforce the same rule
FK_COLUMNS, FK_TARGET = ("request_id_fk", "request_created_at"), ("id", "created_at")


#: the partitioned layout's parents (``validate`` compares a partitioned database with these)
PARTITIONED = _partitioned_metadata()

#: pg_catalog, only the columns used here
PG_CLASS = table("pg_class", column("oid"), column("relname"), column("relkind"), column("relpartbound"),
                 column("relispartition"))
PG_INHERITS = table("pg_inherits", column("inhrelid"), column("inhparent"))


def layout(conn: Connection) -> str:
    """``plain``, ``partitioned``, ``none`` (neither table) or ``mixed`` (one of each: drift)."""
    names = [Request.__tablename__, Response.__tablename__]
    kinds = dict(conn.execute(select(PG_CLASS.c.relname, PG_CLASS.c.relkind).where(
        PG_CLASS.c.oid.in_([func.to_regclass(n) for n in names]))).all())
    found = {"p" if kinds.get(n) == "p" else "r" for n in names if n in kinds}
    if not found:
        return "none"
    if found == {"p"}:
        return "partitioned"
    return "plain" if found == {"r"} else "mixed"


@dataclass(frozen=True)
class Partition:
    """One partition as the catalog has it: its name and bound (``FOR VALUES ...`` in UTC)."""

    parent: str
    name: str
    bound: str

    @property
    def default(self) -> bool:
        return self.bound == "DEFAULT"


def partitions(conn: Connection, parent: str) -> list[Partition]:
    child = PG_CLASS.alias("child")
    conn.execute(text("SET TIME ZONE 'UTC'"))  # bounds rendered in UTC, as ``bound_of`` writes them
    rows = conn.execute(select(child.c.relname, func.pg_get_expr(child.c.relpartbound, child.c.oid))
                        .select_from(PG_INHERITS.join(child, child.c.oid == PG_INHERITS.c.inhrelid))
                        .where(PG_INHERITS.c.inhparent == func.to_regclass(parent))
                        .order_by(child.c.relname)).all()
    return [Partition(parent, name, bound) for name, bound in rows]


def period_start(t: datetime, period: str) -> datetime:
    t = t.astimezone(UTC)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "daily" else day.replace(day=1)


def next_start(start: datetime, period: str) -> datetime:
    if period == "daily":
        return start + timedelta(days=1)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def partition_name(parent: str, start: datetime, period: str) -> str:
    return f"{parent}_p{start.strftime(_NAME_FORMAT[period])}"


def bound_of(start: datetime, period: str) -> str:
    """The bound as PostgreSQL renders it (``pg_get_expr`` in UTC)."""
    def ts(t: datetime) -> str:
        return f"'{t:%Y-%m-%d %H:%M:%S}+00'"
    return f"FOR VALUES FROM ({ts(start)}) TO ({ts(next_start(start, period))})"


def start_of(name: str, period: str) -> datetime | None:
    """The period a partition's name stands for (None: not one of ours)."""
    m = _NAME_RE[period].search(name)
    return datetime.strptime(m.group(1), _NAME_FORMAT[period]).replace(tzinfo=UTC) if m else None


def live_period(conn: Connection) -> str | None:
    """daily or monthly, from the names of the requests partitions (None if there is none of ours)."""
    names = [p.name for p in partitions(conn, Request.__tablename__) if not p.default]
    for period in PERIODS:
        if names and all(start_of(n, period) for n in names):
            return period
    return None


def wanted_starts(period: str, now: datetime) -> list[datetime]:
    """The current period and ``AHEAD`` more."""
    starts = [period_start(now, period)]
    for _ in range(AHEAD[period]):
        starts.append(next_start(starts[-1], period))
    return starts


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def twin(name: str) -> str:
    """The requests partition of a responses partition's period (same suffix)."""
    return Request.__tablename__ + name.removeprefix(Response.__tablename__)


def partition_fk(responses_partition: str) -> ForeignKeyConstraint:
    """The FK of one responses partition to its twin, ON DELETE CASCADE as the plain layout's."""
    md = MetaData()
    req = Table(twin(responses_partition), md, *(Column(c, BigInteger) for c in FK_TARGET))
    resp = Table(responses_partition, md, *(Column(c, BigInteger) for c in FK_COLUMNS))
    fk = ForeignKeyConstraint([resp.c[c] for c in FK_COLUMNS], [req.c[c] for c in FK_TARGET], ondelete="CASCADE",
                              name=f"{responses_partition}_request_fk")
    resp.append_constraint(fk)
    return fk


def ensure_partitions(conn: Connection, period: str, now: datetime | None = None,
                      warnings: list[str] | None = None) -> list[str]:
    """Create the default partitions and the periods from now to ``AHEAD`` that are missing, requests
    first, each responses partition with its FK to its twin (``partition_fk``). Returns the partitions
    created. A period whose rows already sit in the default partition cannot be created (PostgreSQL
    refuses): it is left out for both tables, and said in ``warnings``."""
    from sqlalchemy.schema import AddConstraint  # noqa: PLC0415

    now = now or datetime.now(UTC)
    made: list[str] = []
    blocked: set[datetime] = set()
    for parent, key in PARTITION_KEY.items():
        have = {p.name for p in partitions(conn, parent)}
        default = f"{parent}{DEFAULT_SUFFIX}"
        todo: list[tuple[str, str]] = [] if default in have else [(default, "DEFAULT")]
        for start in wanted_starts(period, now):
            name = partition_name(parent, start, period)
            if name in have:
                continue
            stranded = table(default, column(key))
            if start in blocked or (default in have and conn.execute(select(select(text("1")).select_from(
                    stranded).where(stranded.c[key] >= start, stranded.c[key] < next_start(start, period))
                    .exists())).scalar()):
                blocked.add(start)
                if warnings is not None:
                    warnings.append(f"{parent}: {name} cannot be made: rows of {start:%Y-%m-%d} are in a default "
                                    "partition; move them out by hand (docs/PARTITIONING.md)")
                continue
            todo.append((name, bound_of(start, period)))
        for name, bound in todo:
            conn.execute(text(f"CREATE TABLE {_quote(conn, name)} PARTITION OF {_quote(conn, parent)} {bound}"))
            if parent == Response.__tablename__:
                conn.execute(AddConstraint(partition_fk(name)))
            made.append(name)
    return made


class Refused(Exception):
    """A command that would do the wrong thing to this database (one line, nothing changed)."""


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


def create(url: str | URL, partition: str | None = None, made: list[str] | None = None,
           warnings: list[str] | None = None) -> list[str]:
    """Create the schema on an empty database, or migrate an existing POC-1 database to the models.

    An empty database gets ``create_all`` (of the models, or with ``partition`` of ``PARTITIONED`` plus
    its partitions) and is stamped at the newest revision; a database made before alembic came in (no
    version table) is the baseline; then alembic upgrades to head. An existing database keeps its
    layout: a partitioned one gets the partitions ahead it lacks (``partition``, if given, must be its
    period), a plain one is never partitioned (``Refused``). Returns the revisions applied (empty when
    already current); the partitions created are appended to ``made``, what kept one from being made to
    ``warnings``."""
    from alembic import command  # noqa: PLC0415

    if partition is not None and partition not in PERIODS:
        raise Refused(f"--partition must be one of {', '.join(PERIODS)}, not {partition!r}")
    made = made if made is not None else []
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            found = layout(conn)
            cfg = _alembic(conn)
            if found == "none":
                (PARTITIONED if partition else Base.metadata).create_all(conn)
                if partition:
                    made += ensure_partitions(conn, partition, warnings=warnings)
                command.stamp(cfg, "head")
                return []
            if found == "mixed":
                raise Refused("one of requests/responses is partitioned and the other is not: "
                              "fix by hand (db_init.py validate lists the differences)")
            period = live_period(conn) if found == "partitioned" else None
            if partition and found == "plain":
                raise Refused(f"{Request.__tablename__} is a plain table: create --partition makes a new "
                              "database partitioned, it does not convert one (nothing changed)")
            if found == "partitioned" and partition and period and partition != period:
                raise Refused(f"the database is partitioned {period}, not {partition} (nothing changed)")
            before = live_revision(conn)
            if before is None:
                command.stamp(cfg, BASELINE_REVISION)
                before = BASELINE_REVISION
            command.upgrade(cfg, "head")
            after = live_revision(conn)
            if found == "partitioned":
                if not (period or partition):
                    raise Refused("partitioned, but no partition of ours tells daily from monthly: "
                                  "pass --partition=daily|monthly")
                made += ensure_partitions(conn, str(period or partition), warnings=warnings)
            return [] if after == before else [f"{before} -> {after}"]
    finally:
        engine.dispose()


def parse_age(value: str) -> timedelta:
    """``30d`` (days) or ``12h`` (hours): the ages ``prune --older-than`` accepts."""
    m = re.fullmatch(r"\s*(\d+)\s*([dh])\s*", value or "")
    if not m or int(m.group(1)) == 0:
        raise Refused(f"--older-than takes a number of days or hours such as 30d or 12h, not {value!r}")
    n = int(m.group(1))
    return timedelta(days=n) if m.group(2) == "d" else timedelta(hours=n)


#: prune waits at most this long for the tables' lock (the logger's statements are short): then it
#: gives up instead of queueing every write behind it
PRUNE_LOCK_TIMEOUT_MS = 2000
#: a requests partition's DETACH runs PostgreSQL's FK check over its rows (~1 s per 300k rows measured,
#: docs/PARTITIONING.md), holding the parents' lock: the logger's writes wait, then spool. Bounded, but
#: past the default 5 s, so that a big period can still go
PRUNE_STATEMENT_TIMEOUT_MS = 600_000


def prune(url: str | URL, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """Drop the partitions whose whole period ended before ``now - older_than``: each period's responses
    partition, then its requests partition, detached and dropped in one transaction (catalog work: no
    row is scanned or deleted). The default partitions are never dropped. Returns what was dropped;
    ``Refused`` on a plain layout (it would take a DELETE)."""
    cutoff = (now or datetime.now(UTC)) - older_than
    dropped: list[str] = []
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = layout(conn)
            if found != "partitioned":
                raise Refused(f"the log tables are {found}, not partitioned: prune drops partitions and "
                              "never deletes rows (nothing changed)")
            period = live_period(conn)
            if period is None:
                return []
            conn.rollback()
            old = sorted({start for p in partitions(conn, Request.__tablename__) + partitions(conn, Response.__tablename__)
                          if (start := start_of(p.name, period)) and next_start(start, period) <= cutoff})
            conn.rollback()
            for start in old:
                with conn.begin():
                    conn.execute(text(f"SET LOCAL lock_timeout = {PRUNE_LOCK_TIMEOUT_MS}"))
                    conn.execute(text(f"SET LOCAL statement_timeout = {PRUNE_STATEMENT_TIMEOUT_MS}"))
                    have = {p.name for parent in (Response.__tablename__, Request.__tablename__)
                            for p in partitions(conn, parent)}
                    for parent in (Response.__tablename__, Request.__tablename__):  # responses first: the FK
                        name = partition_name(parent, start, period)
                        if name in have:
                            conn.execute(text(f"ALTER TABLE {_quote(conn, parent)} DETACH PARTITION "
                                              f"{_quote(conn, name)}"))
                            conn.execute(text(f"DROP TABLE {_quote(conn, name)}"))
                            dropped.append(name)
    finally:
        engine.dispose()
    return dropped


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


def _primary_key_drift(insp: Any, live_tables: set[str], metadata: MetaData | None = None) -> list[Drift]:
    """alembic's autogenerate does not compare primary keys (a documented limitation, confirmed by
    test_dropped_primary_key_is_named), so they are compared here with the inspector."""
    drifts = []
    for table_ in (metadata or Base.metadata).sorted_tables:
        if table_.name in live_tables:
            have = insp.get_pk_constraint(table_.name).get("constrained_columns") or []
            want = [c.name for c in table_.primary_key.columns]
            if list(have) != want:
                drifts.append(Drift(table_.name, f"primary key is {have}, expected {want}"))
    return drifts


def _compare_opts(skip: set[str]) -> dict[str, Any]:
    """``COMPARE_OPTS`` that also leave out ``skip`` (the partitions: their parents are compared)."""
    def include(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
        return not (type_ == "table" and name in skip) and include_name(name, type_, parent_names)
    return {**COMPARE_OPTS, "include_name": include}


def partition_drift(conn: Connection, now: datetime | None = None) -> tuple[list[Drift], list[str]]:
    """What a partitioned database lacks (drift: a default partition, the periods from now to ``AHEAD``,
    a partition whose bound is not its name's, a period of one table without the other's) and warnings
    (rows in a default partition: kept, but outside every period, so prune never drops them)."""
    now = now or datetime.now(UTC)
    drifts: list[Drift] = []
    warnings: list[str] = []
    period = live_period(conn)
    if period is None:
        return [Drift(Request.__tablename__, "no daily or monthly partition (run db_init.py create --partition=...)")], []
    starts: dict[str, set[datetime]] = {}
    for parent, key in PARTITION_KEY.items():
        parts = partitions(conn, parent)
        starts[parent] = set()
        default = f"{parent}{DEFAULT_SUFFIX}"
        for p in parts:
            start = start_of(p.name, period)
            if p.default:
                if p.name != default:
                    drifts.append(Drift(parent, f"default partition is {p.name}, expected {default}"))
                rows = conn.execute(select(func.count()).select_from(
                    select(text("1")).select_from(table(p.name)).limit(1000).subquery())).scalar_one()
                if rows:
                    warnings.append(f"{parent}: {'1000+' if rows >= 1000 else rows} row(s) in the default "
                                    f"partition {p.name} ({key} outside every {period} "
                                    "partition; prune never drops them)")
            elif start is None:
                drifts.append(Drift(parent, f"extra partition {p.name} (not {period} {parent}_p...)"))
            elif p.bound != bound_of(start, period):
                drifts.append(Drift(parent, f"partition {p.name} is {p.bound}, expected {bound_of(start, period)}"))
            else:
                starts[parent].add(start)
        if default not in {p.name for p in parts}:
            drifts.append(Drift(parent, f"missing default partition {default} (a row outside every "
                                        "partition would be refused)"))
        for start in wanted_starts(period, now):
            if start not in starts[parent]:
                drifts.append(Drift(parent, f"missing {period} partition {partition_name(parent, start, period)} "
                                            f"for {start:%Y-%m-%d} (run db_init.py create)"))
    insp = inspect(conn)
    for p in partitions(conn, Response.__tablename__):
        want = partition_fk(p.name)
        found = [fk for fk in insp.get_foreign_keys(p.name)
                 if tuple(fk["constrained_columns"]) == FK_COLUMNS and fk["referred_table"] == twin(p.name)
                 and tuple(fk["referred_columns"]) == FK_TARGET
                 and (fk.get("options") or {}).get("ondelete", "").upper() == "CASCADE"]
        if not found:
            drifts.append(Drift(Response.__tablename__, f"partition {p.name} lacks its foreign key "
                                                        f"{_fk_text(want)} ON DELETE CASCADE"))
    req, resp = (starts[t] for t in PARTITION_KEY)
    for start in sorted(req ^ resp):
        lacking = Response.__tablename__ if start in req else Request.__tablename__
        drifts.append(Drift(lacking, f"no partition {partition_name(lacking, start, period)} for the other "
                                     "table's period (a request and its responses share a period)"))
    return drifts, warnings


def compare(engine: Engine, warnings: list[str] | None = None) -> list[Drift]:
    """Every difference between the models and the live database: the migration revision, then what
    alembic's ``compare_metadata`` finds (tables, columns, types, nullability, server defaults,
    indexes, unique constraints, FKs with their ON DELETE), then primary keys. A partitioned database is
    compared with ``PARTITIONED`` (its parents: the partitions are left out of alembic's view), then its
    partitions (``partition_drift``; its warnings are appended to ``warnings``)."""
    from alembic.autogenerate import compare_metadata  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    drifts: list[Drift] = []
    with engine.connect() as conn:
        found = layout(conn)
        if found == "mixed":
            drifts.append(Drift(Request.__tablename__, "requests and responses are not both partitioned "
                                                       "or both plain"))
        metadata = PARTITIONED if found == "partitioned" else Base.metadata
        skip = ({p.name for parent in PARTITION_KEY for p in partitions(conn, parent)}
                if found in ("partitioned", "mixed") else set())
        insp = inspect(conn)
        live_tables = set(insp.get_table_names())
        have, want = live_revision(conn), head_revision()
        if live_tables & set(Base.metadata.tables) and have != want:
            have = have or "none (made before migrations)"
            drifts.append(Drift(VERSION_TABLE, f"schema revision is {have}, expected {want}: "
                                               "run db_init.py create to migrate"))
        context = MigrationContext.configure(conn, opts=_compare_opts(skip) if skip else COMPARE_OPTS)
        diffs = compare_metadata(context, metadata)
        if skip:  # PostgreSQL's clones of the parents' FK, one per referenced partition: not drift
            diffs = [d for d in diffs if not (isinstance(d, tuple) and d[0] == "remove_fk"
                                              and _fk_text(d[-1]).split(" -> ")[1].split("(")[0] in skip)]
        drifts += drift_lines(diffs, engine.dialect)
        drifts += _primary_key_drift(insp, live_tables, metadata)
        if found == "partitioned":
            more, warned = partition_drift(conn)
            drifts += more
            if warnings is not None:
                warnings += warned
    return drifts


def validate(url: str | URL, warnings: list[str] | None = None) -> list[Drift]:
    engine = make_engine(url)
    try:
        return compare(engine, warnings)
    finally:
        engine.dispose()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("create", "create the tables and indexes (idempotent; partitioned: the partitions ahead)"),
                        ("validate", "compare the live schema with the models"),
                        ("prune", "drop the partitions older than --older-than (partitioned layout only)")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--url", default=os.environ.get(URL_ENV),
                       help=f"SQLAlchemy database URL (default: ${URL_ENV})")
        if name == "create":
            p.add_argument("--partition", choices=PERIODS, default=None,
                           help="a new database: partition both tables by day or month (opt-in)")
        if name == "prune":
            p.add_argument("--older-than", required=True, help="an age such as 30d (days) or 12h (hours)")
    return parser.parse_args(argv)


def _report(target: str, drifts: list[Drift], warnings: list[str], created: bool) -> int:
    for w in warnings:
        print(f"db_init: warning: {w}", file=sys.stderr)
    if drifts:
        if created:
            print(f"db_init: created, but {target} still differs from the models:", file=sys.stderr)
        else:
            print(f"db_init: schema drift on {target} ({len(drifts)}):")
        for d in drifts:
            print(f"  - {d}", file=sys.stderr if created else sys.stdout)
        return EXIT_DRIFT
    if created:
        print(f"db_init: schema present on {target}")
    else:
        print(f"db_init: schema on {target} matches the models ({len(Base.metadata.tables)} tables)")
    return EXIT_OK


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
    warnings: list[str] = []
    try:
        if args.command == "prune":
            age = parse_age(args.older_than)
            dropped = prune(args.url, age)
            for name in dropped:
                print(f"db_init: dropped partition {name} on {target}")
            print(f"db_init: pruned {target}: {len(dropped)} partition(s) older than {args.older_than} dropped")
            return EXIT_OK
        if args.command == "create":
            made: list[str] = []
            migrated = create(args.url, args.partition, made, warnings)
            for step in migrated:
                print(f"db_init: migrated {target}: {step}")
            for name in made:
                print(f"db_init: created partition {name} on {target}")
            return _report(target, validate(args.url, warnings), warnings, created=True)
        drifts = validate(args.url, warnings)
    except Refused as exc:
        print(f"db_init: refused on {target}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SQLAlchemyError as exc:
        print(f"db_init: cannot reach {target}: {one_line_cause(exc, args.url)}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except Exception as exc:  # e.g. a missing driver: still one line, still masked
        print(f"db_init: cannot reach {target}: {type(exc).__name__}: {one_line_cause(exc, args.url)}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    return _report(target, drifts, warnings, created=False)


if __name__ == "__main__":
    sys.exit(main())
