"""The logger as a package (issue 13, item 5), without the lab: its modules stay small, its settings come
from one declaration, its metrics are prometheus_client objects under the names check 8 reads, its
``code_sha256`` is the documented digest wherever it is computed (the logger, check 9's repository side
and gateway probe, a shell), and everything that deploys it deploys the whole package (the lab's
provisioning, the lab's fault mutations, the test gateway's app directory)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import gateway_logger
from acceptance import versions
from gateway_logger import identity, settings
from lab import provision
from tests.support import lab_mutation
from tests.support.gateway import APP_ENTRIES, app_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway_logger"
MODULE_MAX_LINES = 500


def test_every_module_of_the_package_is_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert len(sizes) > 10 and "__init__.py" in sizes
    assert {n: s for n, s in sizes.items() if s > MODULE_MAX_LINES} == {}
    assert not (ROOT / "gateway_logger.py").exists()  # a module beside the package of that name: never


def test_the_public_names_callers_use_are_importable_from_the_package() -> None:
    for name in ("proxy_handler_instance", "GatewayLogger", "Writer", "Settings", "Spool", "Stats", "capture",
                 "normalize", "spool_tag", "new_request_id", "issued_request_id", "summarize_embeddings",
                 "client_body", "status_of", "serve_metrics", "say", "jsonable", "NO_KEY", "INVALID_KEY",
                 "DISABLED_ENV", "CODE_FILES", "build_info", "code_sha256"):
        assert hasattr(gateway_logger, name), name
    assert set(gateway_logger.__all__) <= set(dir(gateway_logger))
    assert isinstance(gateway_logger.proxy_handler_instance, gateway_logger.GatewayLogger)


# -------------------------------------------------------------------------------------------- settings


def test_settings_are_parsed_as_declared(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"POC1_LOGGER_QUEUE_MAX": " 7 ", "POC1_LOGGER_WRITE_TIMEOUT_S": "2.5",
           "POC1_LOGGER_METRICS_PORT": "", "POC1_LOGGER_SPOOL_DIR": "/tmp/x", "POC1_LOGGER_METRICS_DIR": ""}
    s = gateway_logger.Settings.from_env(env)
    assert (s.queue_max, s.write_timeout_s, s.metrics_port, s.spool_dir) == (7, 2.5, None, "/tmp/x")
    assert s.metrics_dir == settings._default_metrics_dir()  # empty: the default
    assert s.spool_dir != gateway_logger.Settings().spool_dir
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("QUEUE_MAX", "0", "an integer >= 1"), ("QUEUE_MAX", "1.5", "an integer >= 1"),
    ("FLUSH_INTERVAL_MS", "-1", "an integer >= 0"), ("WRITE_TIMEOUT_S", "nan", "a number >= 0"),
    ("SHUTDOWN_TIMEOUT_S", "inf", "a number >= 0"),
    ("METRICS_PORT", "70000", "an integer from 0 to 65535, or empty"),
    ("BATCH_MAX", "", "an integer >= 1"),
])
def test_a_malformed_setting_is_said_and_its_default_kept(capsys: pytest.CaptureFixture[str], name: str,
                                                         raw: str, expected: str) -> None:
    s = gateway_logger.Settings.from_env({f"POC1_LOGGER_{name}": raw})
    field = name.lower()
    assert getattr(s, field) == getattr(gateway_logger.Settings(), field)
    err = capsys.readouterr().err
    assert f"POC1_LOGGER_{name}={raw!r} is not a valid number ({expected}" in err
    assert "using the default" in err


def test_settings_bounds_hold_for_direct_construction_too() -> None:
    with pytest.raises(ValueError, match="batch_max=0"):
        gateway_logger.Settings(batch_max=0)
    assert gateway_logger.Settings(spool_dir="").spool_dir == settings._default_spool_dir()


def test_the_settings_docs_are_written_from_the_declaration() -> None:
    lines = settings.describe()
    names = [f.name for f in settings.fields(gateway_logger.Settings)]
    assert len(lines) == len(names)
    assert all(f"``POC1_LOGGER_{n.upper()}``" in ln for n, ln in zip(names, lines))
    assert "``POC1_LOGGER_QUEUE_MAX_BYTES`` [64 MiB] (an integer >= 1)" in lines[1]
    assert all(ln in (gateway_logger.__doc__ or "") for ln in lines)


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_are_prometheus_client_objects_under_check_8s_names() -> None:
    from prometheus_client import Counter, Gauge, Histogram
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import CollectorRegistry

    stats = gateway_logger.Stats()
    assert all(isinstance(c, Counter) for c in stats.counters.values())
    assert all(isinstance(g, Gauge) for g in stats.gauge_metrics.values())
    assert isinstance(stats.batch_seconds, Histogram) and isinstance(stats.build_info, Gauge)
    stats.add("rows_dropped", 2)
    stats.observe_batch(0.003)
    assert (stats["rows_dropped"], stats["batches"], stats.snapshot()["rows_dropped"]) == (2, 1, 2)
    registry = CollectorRegistry()
    for metric in (*stats.counters.values(), *stats.gauge_metrics.values(), stats.batch_seconds):
        registry.register(metric)
    samples = {s.name for f in text_string_to_metric_families(generate_latest(registry).decode())
               for s in f.samples}
    read_by_check_8 = {"rows_dropped_total", "rows_written_total", "rows_spooled_total",
                       "rows_replayed_total", "rows_rejected_total", "rows_replaced_total",
                       "rows_duplicate_total",
                       "connection_losses_total", "pool_checkouts_total", "pool_connects_total", "connected",
                       "writer_alive", "writer_heartbeat_seconds", "heartbeat_stale_after_seconds",
                       "start_time_seconds", "queue_depth", "queue_max", "spool_max_rows", "spool_rows",
                       "in_flight", "workers", "batch_seconds_max", "batch_write_seconds_bucket"}
    assert {f"gateway_logger_{n}" for n in read_by_check_8} <= samples
    assert gateway_logger.GAUGE_MODES["connected"] == "livemin"
    assert gateway_logger.COUNTERS[0] == "rows_received"


# ----------------------------------------------------------------------------------- what runs is signed


def _shell_code_sha256(directory: Path) -> str:
    cmd = "sha256sum $(printf '%s\\n' gateway_logger/*.py | LC_ALL=C sort) db_init.py | sha256sum"
    out = subprocess.run(["sh", "-c", cmd], cwd=directory, capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_code_sha256_is_the_documented_digest_wherever_it_is_computed() -> None:
    loaded = identity.record_loaded()
    assert list(identity.CODE_FILES) == [*versions.logger_files(), "db_init.py"] == list(loaded)
    assert identity.CODE_FILES[0] == "gateway_logger/__init__.py"
    shell = _shell_code_sha256(ROOT)
    assert gateway_logger.build_info()["code_sha256"] == identity.code_sha256(loaded) == shell
    assert versions.code_sha256(versions.repo_files()) == shell  # config.yaml is not part of it
    unreadable = {**versions.repo_files(), "gateway_logger/__init__.py": "unreadable: x"}
    assert versions.code_sha256(unreadable) is None


def _probe(files: dict[str, Path]) -> dict:
    args = [f"{name}={path}" for name, path in files.items()]
    out = subprocess.run([sys.executable, "-c", versions._GATEWAY_PROBE, *args], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["files"]


def _copy_app(tmp: Path) -> Path:
    app = tmp / "app"
    (app / "gateway_logger").mkdir(parents=True)
    for rel in [*versions.logger_files(), "db_init.py", "config.yaml"]:
        (app / rel).write_bytes((ROOT / rel).read_bytes())
    return app


def test_check_9_reads_the_gateways_package_file_by_file(tmp_path: Path) -> None:
    app = _copy_app(tmp_path)
    repo = versions.repo_files()

    def gateway() -> dict:
        return _probe({"db_init.py": app / "db_init.py", "gateway_logger/": app / "gateway_logger",
                       "config.yaml": app / "config.yaml"})

    same = gateway()
    assert same == repo and versions.differences(repo, same) == []
    assert versions.files_match(repo, same) == {"db_init.py": True, "config.yaml": True,
                                                "gateway_logger/": True}
    assert versions.code_sha256(same) == _shell_code_sha256(app)

    with open(app / "gateway_logger" / "writer.py", "a") as f:
        f.write("\nPOC1_CHANGED = True\n")
    (app / "gateway_logger" / "extra.py").write_text("print('not signed')\n")
    (app / "gateway_logger" / "__pycache__").mkdir()
    (app / "gateway_logger" / "spool.py").unlink()
    changed = gateway()
    found = dict(versions.differences(repo, changed))
    assert set(found) == {"gateway_logger/writer.py", "gateway_logger/extra.py", "gateway_logger/spool.py"}
    assert found["gateway_logger/spool.py"] == "missing on the gateway"
    assert found["gateway_logger/extra.py"].endswith("not in the repository")
    was = repo["gateway_logger/writer.py"]
    assert found["gateway_logger/writer.py"].endswith(f"the repository's {was[:12]}")
    assert versions.files_match(repo, changed)["gateway_logger/"] is False
    assert versions.code_sha256(changed) == _shell_code_sha256(app) != versions.code_sha256(repo)

    gone = _probe({"gateway_logger/": tmp_path / "nowhere"})
    assert list(versions.differences({"gateway_logger/__init__.py": "x"}, gone)) == [
        ("gateway_logger/", "unreadable: No such file or directory")]  # one cause, not one per file
    assert versions.code_sha256(gone) is None


# ---------------------------------------------------------------------------------------------- deploying


def test_the_lab_deploys_every_file_of_the_package_and_nothing_else() -> None:
    assert provision.LOGGER_FILES == versions.logger_files()
    placed = {p.dest: p.content for p in provision.gateway_code()}
    logger = {dest: content for dest, content in placed.items() if "gateway_logger" in dest}
    assert logger == {f"/opt/litellm/{rel}": (ROOT / rel).read_bytes() for rel in versions.logger_files()}
    assert all(p.mode == 0o644 for p in provision.gateway_code() if "gateway_logger" in p.dest)


def test_a_lab_from_before_the_package_shows_its_old_files_as_stale(tmp_path: Path) -> None:
    package = tmp_path / "opt/litellm/gateway_logger"
    package.mkdir(parents=True)
    for rel in provision.LOGGER_FILES:
        (tmp_path / "opt/litellm" / rel).write_text("x")
    (tmp_path / "opt/litellm/gateway_logger.py").write_text("the old module")
    (package / "removed_since.py").write_text("x")
    (package / "__pycache__").mkdir()
    (tmp_path / "opt/litellm/db_init.py").write_text("x")
    stale = provision.stale_gateway_files(tmp_path)
    assert stale == ["/opt/litellm/gateway_logger.py", "/opt/litellm/gateway_logger/removed_since.py"]
    assert provision.stale_gateway_files(tmp_path / "empty") == []


def test_the_lab_mutations_patch_the_module_that_holds_their_code_and_install_the_whole_package(
        tmp_path: Path) -> None:
    mutations = (lab_mutation.BLOCKS_EVENT_LOOP, lab_mutation.DROPS_STREAMS, lab_mutation.DEAD_WRITER,
                 lab_mutation.STALE_CODE)
    assert {m.module for m in mutations} == {"callback.py", "writer.py", "__init__.py"}
    files = lab_mutation.mutated_logger(*mutations)
    assert set(files) == {rel.split("/")[1] for rel in versions.logger_files()}
    with pytest.raises(ValueError, match="not a module of the package"):
        lab_mutation.mutated_logger(lab_mutation.Mutation("gateway_logger.py", "x = 1"))

    # the install script as the gateway host runs it: over an older package and the old single module
    target = tmp_path / "opt" / "gateway_logger"
    target.mkdir(parents=True)
    (target / "leftover.py").write_text("x")
    (tmp_path / "opt" / "gateway_logger.py").write_text("the old module")
    subprocess.run([sys.executable, "-c", lab_mutation.INSTALL, str(target)], input=json.dumps(files),
                   text=True, check=True)
    assert {p.name: p.read_text() for p in target.iterdir()} == files
    assert not (tmp_path / "opt" / "gateway_logger.py").exists()
    assert sorted(p.name for p in (tmp_path / "opt").iterdir()) == ["gateway_logger"]
    assert {oct(p.stat().st_mode & 0o777) for p in target.iterdir()} == {"0o644"}

    # the installed package imports, with each mutation in effect before the callback's instance exists
    (tmp_path / "opt" / "db_init.py").symlink_to(ROOT / "db_init.py")
    check = textwrap.dedent("""
        import gateway_logger as g
        assert g.Writer._ingest.__name__ == "_poc1_dead_ingest"
        assert g.GatewayLogger._submit.__name__ == "_poc1_drop_streams"
        assert g.GatewayLogger.async_log_success_event.__name__ == "_poc1_blocking_success"
        assert g.POC1_FAULT_STALE_CODE is True
        print(g.build_info()["code_sha256"])
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "opt")}
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == _shell_code_sha256(tmp_path / "opt") != _shell_code_sha256(ROOT)


def test_the_test_gateway_imports_the_package_from_an_app_directory_like_the_gateways(tmp_path: Path) -> None:
    app = app_dir(tmp_path / "app")
    assert app_dir(app) == app  # again: the links are kept
    assert sorted(p.name for p in app.iterdir()) == sorted(APP_ENTRIES)
    assert (app / "gateway_logger").resolve() == PACKAGE
    assert (app / "db_init.py").resolve() == ROOT / "db_init.py"


class _LocalShell:
    """What a run's gateway session does, here: the command through sh, on this host."""

    def run(self, cmd: str) -> types.SimpleNamespace:
        proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        return types.SimpleNamespace(rc=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
                                     ok=proc.returncode == 0)


def test_the_versions_lock_reads_the_gateways_code_with_the_gateways_python(tmp_path: Path) -> None:
    app = _copy_app(tmp_path)
    config = app / "config.yaml"
    target = types.SimpleNamespace(vars={"gateway_app_dir": f"{app}/", "gateway_config_path": str(config),
                                         "gateway_python": sys.executable})
    got = versions.gateway_versions(target, types.SimpleNamespace(gateway=_LocalShell()))  # type: ignore[arg-type]
    assert got["files"] == versions.repo_files() and got["code_sha256"] == _shell_code_sha256(app)
    assert got["paths"]["gateway_logger/writer.py"] == f"{app}/gateway_logger/writer.py"
    assert got["paths"]["config.yaml"] == str(config)
