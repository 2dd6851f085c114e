"""The metrics port: the logger's metrics as Prometheus text on 127.0.0.1 only, one view of every worker
of the gateway (prometheus_client's multiprocess mode, in a directory per gateway run)."""
from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway_logger.journal import say, strerror
from gateway_logger.metrics import Stats
from gateway_logger.settings import Settings

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RUN_DIR = re.compile(r"run-(\d+)-(\d+)$")
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]*_(\d+)\.db$")


def worker_count() -> int:
    """``litellm --num_workers`` (the CLI puts it in NUM_WORKERS, which its workers inherit)."""
    try:
        return max(1, int(os.environ.get("NUM_WORKERS", "1")))
    except ValueError:
        return 1


def _process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def metrics_run_dir(base: str) -> Path:
    """This gateway run's directory for prometheus_client's multiprocess files, shared by its workers:
    named after the process that started them (uvicorn's supervisor; with one worker, the CLI process
    itself) and its start time. Directories of runs whose process is gone are removed: only names of that
    pattern, in our own 0700 directory, and only their .db files (rmdir fails on anything else)."""
    leader = os.getppid() if worker_count() > 1 else os.getpid()
    root = Path(base)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    run = root / f"run-{leader}-{_process_start(leader) or 0}"
    for old in root.iterdir():
        match = _RUN_DIR.match(old.name)
        if match and old != run and _process_start(int(match[1])) != match[2]:
            for f in old.glob("*.db"):
                with contextlib.suppress(OSError):
                    f.unlink()
            with contextlib.suppress(OSError):
                old.rmdir()
    run.mkdir(mode=0o700, exist_ok=True)
    return run


def enable_multiprocess(settings: Settings) -> Path | None:
    """prometheus_client's multiprocess mode for a gateway worker (before its first metric is made): each
    worker's metrics live in mmap'd files of the run directory, and the worker that holds the metrics port
    serves the sum. Why this rather than a port per worker: one scrape (check 8) sees the whole gateway,
    counters of a worker that died still count, and another worker takes the port over if its holder dies.
    ``$PROMETHEUS_MULTIPROC_DIR``, when set, is used as it is (LiteLLM empties it at start)."""
    configured = os.environ.get(_MULTIPROC_ENV)
    try:
        path = Path(configured) if configured else metrics_run_dir(settings.metrics_dir)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        say(f"metrics directory unusable ({strerror(exc)}); this worker serves its own metrics only")
        return None
    os.environ[_MULTIPROC_ENV] = str(path)
    global _MULTIPROCESS_DIR
    _MULTIPROCESS_DIR = path
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):  # imported before: switch it now
        values.ValueClass = values.MultiProcessValue()
    return path


#: this process's multiprocess directory, once enabled
_MULTIPROCESS_DIR: Path | None = None


def retire_metrics() -> None:
    """A worker that stops leaves the live gauges (its counters stay counted)."""
    if _MULTIPROCESS_DIR is not None:
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), str(_MULTIPROCESS_DIR))


def _mark_dead_workers(path: Path) -> None:
    """Drop the live gauges of workers that died (a SIGKILL runs no exit hook); counters stay counted."""
    from prometheus_client import multiprocess

    pids = {int(m[1]) for f in path.glob("gauge_live*_*.db") if (m := _LIVE_GAUGE_FILE.search(f.name))}
    for pid in pids - {os.getpid()}:
        if not _pid_alive(pid):
            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(pid, str(path))


class _Collector:
    """What /metrics serves: this process's metrics, or (multiprocess) the sum over the run's workers."""

    def __init__(self, stats: Stats, multiprocess_dir: Path | None) -> None:
        self.stats, self.dir = stats, multiprocess_dir

    def collect(self) -> Iterable[Any]:
        self.stats.push_gauges()
        if self.dir is None:
            metrics = [*self.stats.counters.values(), *self.stats.gauge_metrics.values(),
                       self.stats.batch_seconds, self.stats.build_info]
            families = [family for metric in metrics for family in metric.collect()]
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            _mark_dead_workers(self.dir)
            families = [f for f in MultiProcessCollector(None, path=str(self.dir)).collect()
                        if f.name.startswith("gateway_logger_")]
        for family in families:
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


def serve_metrics(stats: Stats, port: int, settings: Settings | None = None,
                  multiprocess_dir: Path | None = None, quiet: bool = False) -> bool:
    """Prometheus text on http://127.0.0.1:<port>/metrics (loopback only: read it on the host)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, multiprocess_dir))
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        if not quiet:
            say(f"metrics not served on 127.0.0.1:{port}: {strerror(exc)}"
                + ("; another worker of this gateway serves every worker's metrics there, or this one takes "
                   "over when that worker is gone (tried every 5 s)" if multiprocess_dir else ""))
        return False
    whose = "every worker of this gateway, summed" if multiprocess_dir else "this process"
    say(f"metrics on http://127.0.0.1:{port}/metrics ({whose})")
    return True
