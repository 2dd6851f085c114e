"""The writer's link to the database (a mixin of ``Writer``: the state it uses is made in
``Writer.__init__``): the engine and its first probe, the connection state and its journal lines
(established, lost, restored), and the *watchdog* thread that shuts the sockets of a database operation
running past the write timeout (a frozen server still ACKs TCP, so keepalives do not notice)."""
from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

import db_init
from gateway_logger.database import KEEPALIVES, is_row_error, resolve_db_url
from gateway_logger.journal import say
from gateway_logger.metrics import Stats
from gateway_logger.settings import Settings
from gateway_logger.spool import Spool, spool_tag


class Connection:
    """``_setup``, ``_probe``, ``_up``/``_down``, ``_arm``/``_disarm`` around each database operation, the
    watchdog's turns, and ``_data_problem`` (is a failed write the rows' fault, or an outage?)."""

    settings: Settings
    stats: Stats
    url: str | None
    engine: Engine | None
    spool: Spool | None
    _url_source: str | Callable[[], str | None] | None
    _stop: threading.Event
    _spool_wake: threading.Event
    _state: str  #: unknown -> up/down; "established" is said once, later "restored"
    _state_lock: threading.Lock  #: the watchdog thread also declares the connection lost
    _ever_up: bool
    _down_since: float
    _server: str
    _beat: float
    _deadline: float | None
    _op_started: float | None
    _raw_conns: dict[int, Any]
    _conns_lock: threading.Lock
    _inbox: Any
    _backlog: Any
    _pending: list[dict[str, Any]]
    _supervised: Callable[[str, Callable[[], bool]], None]  # Supervision

    def _setup(self) -> None:
        self.url = self._resolve_url()
        self.spool = Spool(self.settings.spool_dir, self.settings.spool_max_rows, self.settings.batch_max,
                           spool_tag(self.url), self.stats, self.settings.batch_max_bytes)
        if not self.url:
            say(f"no database URL (general_settings.gateway_logger_db_url or {db_init.URL_ENV}); "
                "rows go to the spool and are dropped past its bound")
            return
        try:
            url = make_url(self.url)
            if url.get_backend_name() != "postgresql":
                raise ValueError(f"backend {url.get_backend_name()} is not PostgreSQL")
            # autocommit: a batch is one statement (bulk), so BEGIN/COMMIT would be two more round trips,
            # each a wait for the GIL on a busy gateway; no pre-ping (a third): a connection found broken
            # by a write is invalidated and the write retried once on a new one (Batches._insert)
            self.engine = db_init.make_engine(
                url, application_name="gateway_logger", pool_size=2, max_overflow=0, pool_timeout=10,
                connect_args=dict(KEEPALIVES), isolation_level="AUTOCOMMIT", pool_pre_ping=False)
        except Exception as exc:
            say(f"database URL unusable ({type(exc).__name__}: {db_init.one_line_cause(exc, self.url)}); "
                "rows go to the spool")
            self.engine = None
            return
        event.listen(self.engine, "connect", self._on_connect)
        event.listen(self.engine, "close", self._on_close)
        event.listen(self.engine, "checkout", lambda *a: self.stats.add("pool_checkouts"))
        if self.spool.rows:
            say(f"{self.spool.rows} spooled row(s) found in {self.settings.spool_dir}; replaying them")
        self._probe()

    def _resolve_url(self) -> str | None:
        source = self._url_source
        if isinstance(source, str):
            return source
        if callable(source):
            return source()
        proxy = sys.modules.get("litellm.proxy.proxy_server")
        if proxy is not None:
            # the proxy creates its callbacks before it reads general_settings: wait for them briefly
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not getattr(proxy, "general_settings", None):
                if self._stop.wait(0.05):
                    break
        return resolve_db_url()

    def _server_facts(self) -> Any:
        assert self.engine is not None
        self._arm()
        try:
            with self.engine.connect() as conn:
                return conn.execute(select(func.current_setting("server_version"), func.current_database(),
                                           func.current_user())).one()
        finally:
            self._disarm()

    def _probe(self) -> bool:
        """Reach the database and say so on a state change."""
        try:
            version, db, user = self._server_facts()
        except Exception as exc:
            self._down(exc)
            return False
        host = make_url(self.url).host if self.url else "?"
        self._server = f"server=PostgreSQL {str(version).split()[0]} host={host} db={db} user={user}"
        self._up()
        return True

    def _up(self) -> None:
        with self._state_lock:
            if self._state == "up":
                return
            self._say_up()
            self._ever_up, self._state = True, "up"
        self.stats.connected = True

    def _say_up(self) -> None:
        masked = db_init.mask_url(self.url or "")
        if not self._ever_up:
            say(f"database connection established: {masked} {self._server}")
        else:
            waiting = (len(self._inbox) + len(self._backlog) + len(self._pending)
                       + (self.spool.rows if self.spool else 0))
            say(f"database connection restored: {masked} {self._server} "
                f"after {time.monotonic() - self._down_since:.1f}s; rows waiting={waiting}")

    def _down(self, exc: BaseException, dispose: bool = True) -> None:
        with self._state_lock:
            if self._state == "down":
                return
            if self._state == "up":
                self.stats.add("connection_losses")
            say(f"database connection lost: {db_init.one_line_cause(exc, self.url)}")
            self._state, self._down_since = "down", time.monotonic()
        self.stats.connected = False
        self._spool_wake.set()  # the rows in memory go to disk now
        if dispose and self.engine is not None:
            with contextlib.suppress(Exception):
                self.engine.dispose()  # drop pooled sockets of a restarted/frozen server

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        self.stats.add("pool_connects")
        with self._conns_lock:
            self._raw_conns[id(dbapi_conn)] = dbapi_conn

    def _on_close(self, dbapi_conn: Any, record: Any) -> None:
        with self._conns_lock:
            self._raw_conns.pop(id(dbapi_conn), None)

    def _arm(self) -> None:
        self._beat = time.time()
        self._op_started = now = time.monotonic()
        self._deadline = now + self.settings.write_timeout_s

    def _disarm(self) -> None:
        self._deadline = self._op_started = None

    def _watch(self) -> None:
        self._supervised("watchdog", self._watch_turn)

    def _watch_turn(self) -> bool:
        if self._stop.is_set() and self.stopped:
            return False
        time.sleep(0.2)
        deadline = self._deadline
        if deadline is None or time.monotonic() < deadline:
            return True
        self._deadline = None
        self.stats.add("watchdog_fired")
        # a frozen server still ACKs TCP; SQLAlchemy's pre-ping may then reconnect silently, so the
        # loss is declared here, and the next successful write says "restored"
        self._down(TimeoutError(f"no answer within {self.settings.write_timeout_s:g}s (server frozen "
                                "or unreachable); its sockets were closed to retry"), dispose=False)
        with self._conns_lock:
            conns = list(self._raw_conns.values())
        for conn in conns:
            try:
                if getattr(conn, "closed", 1):
                    continue
                fd = conn.fileno()
                with socket.socket(fileno=os.dup(fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
            except Exception:
                pass
        return True

    def _reachable(self) -> bool:
        """Whether the database answers right now (after a failed write: is it the batch, or the server?)."""
        try:
            self._server_facts()
        except Exception:
            return False
        return True

    def _data_problem(self, exc: BaseException) -> bool:
        """A failed write is the rows' fault when the server named their data (SQLSTATE 22/23), or when it
        still answers a probe (a constraint that fails at COMMIT, a statement timeout on a huge batch); it
        is an outage when the connection broke and the server does not answer."""
        if is_row_error(exc):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return False
        return self._reachable()
