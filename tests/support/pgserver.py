"""A throwaway PostgreSQL cluster on loopback for the project's own tests.

Real PostgreSQL (Debian's binaries), run as an unprivileged user because initdb refuses root, on a
free 127.0.0.1 port with its socket in the cluster's own directory. Start to ready is ~2 s.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "poc1pg"
SUPERUSER = "postgres"


def pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
                       check=True)
        return pwd.getpwnam(PG_USER)


@dataclass
class PgServer:
    """One cluster. ``url(db, user, password)`` builds SQLAlchemy URLs for it."""

    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: os.urandom(12).hex())
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poc1-pg-")))

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, db: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql+psycopg2://{user}:{pw}@127.0.0.1:{self.port}/{db}"

    def _run_as_pg(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        user = _ensure_user()

        def demote() -> None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)

        return subprocess.run(list(args), preexec_fn=demote, check=check, timeout=timeout,
                              capture_output=True, text=True, cwd=self.root)

    def start(self) -> "PgServer":
        user = _ensure_user()
        os.chmod(self.root, 0o755)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        bindir = pg_bindir()
        self._run_as_pg(str(bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                        "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync")
        pwfile.unlink()
        self._run_as_pg(str(bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "30",
                        "-l", str(self.root / "log"),
                        "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")
        return self

    def pid(self) -> int:
        return int((self.datadir / "postmaster.pid").read_text().splitlines()[0])

    def stop(self, mode: str = "fast") -> None:
        self._run_as_pg(str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-w", "-m", mode, "stop",
                        check=False)

    def restart(self) -> None:
        self._run_as_pg(str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "30",
                        "-l", str(self.root / "log"),
                        "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off", "start")

    def freeze(self) -> None:
        """SIGSTOP the postmaster and every backend: connections hang instead of failing."""
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def _signal_all(self, sig: int) -> None:
        for pid in self._cluster_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:  # a backend that exited between pgrep and kill
                pass

    def _cluster_pids(self) -> list[int]:
        main = self.pid()
        out = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout
        return [main] + [int(p) for p in out.split()]

    def psql(self, sql: str, db: str = "postgres") -> str:
        cmd = [str(pg_bindir().parent / "bin" / "psql") if (pg_bindir() / "psql").exists() else "psql",
               "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", db,
               "-v", "ON_ERROR_STOP=1", "-Atc", sql]
        env = dict(os.environ, PGPASSWORD=self.password)
        return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=30).stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            self.thaw()
        except Exception:
            pass
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running() -> Iterator[PgServer]:
    """A started cluster, destroyed (thawed, stopped, files removed) however the block ends."""
    server = PgServer().start()
    try:
        yield server
    finally:
        server.destroy()
