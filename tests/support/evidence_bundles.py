"""Real evidence bundles without the lab, for the tests of the summary, waivers, sealing and verify.

Two kinds, both made by the project's own code:
  - a NO-GO run of the real suite through ``python -m tools.validate`` against a loopback target where
    nothing listens (every check fails fast with a one-line cause);
  - a bundle of any outcome built through the evidence layer's API (EvidenceBundle, Documents,
    CheckResults, build_manifest, write_manifest), with check 6's document from the real statistics,
    report.html from a real pytest-html session with the report plugin, sealed and packed by the same
    functions tools.validate calls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from acceptance import overhead_stats, registry
from evidence_writers.bundle import EvidenceBundle
from evidence_writers.manifest import build_manifest
from evidence_writers.redaction import Redactor
from evidence_writers.result import CheckResult
from evidence_writers.waivers import WaiverFile, parse
from evidence_writers.writers import Document

ROOT = Path(__file__).resolve().parents[2]
ALL_PASSED = {c.id: "passed" for c in registry.CHECKS}
STARTED = "2026-12-01T09:49:09.618+00:00"

#: what each check records in its manifest details on a healthy lab (shapes of a real run's manifest)
DETAILS: dict[str, dict[str, Any]] = {
    "service_status": {
        "unit": "litellm-gateway",
        "active_state": "active",
        "sub_state": "running",
        "n_restarts": 0,
        "memory": "362.8 MiB",
        "memory_source": "VmRSS of MainPID",
        "uptime": "0min 10s",
        "uptime_s": 10.0,
        "invocation_id": "f0632ddf1c224a84",
    },
    "gateway_db_connect": {
        "journal_connection_lines": 1,
        "server_version": "15.18 (Debian 15.18-0+deb12u1)",
        "transaction_read_only": "on",
        "sessions_from_gateway": 1,
    },
    "chat_call": {
        "status": 200,
        "latency_ms": 45.6,
        "overhead_ms_reported": "13.279",
        "stream_status": 200,
        "stream_time_to_first_token_ms": 282.0,
        "stream_events": 12,
        "call_id": "e8752299",
    },
    "db_rows": {
        "plain": {"request_id": "gw-5d1b", "responses": 1, "total_tokens": 9},
        "stream": {"request_id": "gw-353e", "responses": 1, "total_tokens": 11},
    },
    "join_check": {
        "requests": 5,
        "responses": 5,
        "orphan_responses": 0,
        "requests_without_response": 0,
        "duplicate_request_ids": 0,
        "requests_with_several_responses": 0,
    },
    "db_tls": {"sessions": 1, "from_gateway": 1, "encrypted": 1, "versions": ["TLSv1.3"]},
    "logger_metrics": {
        "rows_written": 303,
        "rows_dropped": 0,
        "connected": True,
        "reuse_ratio": 0.988,
        "run_reuse_ratio": 1.0,
        "environment": {"Logger rows (since start)": "written 303"},
    },
}
VERSIONS = {
    "suite": {"commit": "c0ffee" * 6 + "abcd", "dirty": False},
    "gateway": {
        "litellm": "1.108.7",
        "sqlalchemy": "2.1.9",
        "psycopg2": "2.9.13",
        "python": "3.11.2",
        "os": "Debian GNU/Linux 12 (bookworm)",
    },
    "db": {"postgresql": "15.18 (Debian 15.18-0+deb12u1)", "os": "Debian GNU/Linux 12 (bookworm)"},
    "files_match": {"db_init.py": True, "config.yaml": True, "gateway_logger/": True},
}


def overhead_document(seed: int = 7) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """Check 6's document and histogram from the real statistics, and the details it puts in the manifest."""
    rng = np.random.default_rng(seed)
    on, off = rng.normal(17, 2, 200), rng.normal(16.5, 2, 200)
    added = overhead_stats.added_latency(on, off)
    lag_values = rng.gamma(2, 4, 200)
    lag = overhead_stats.percentiles(lag_values)
    comp = {
        "logged_sent": 280,
        "logged_ok": 280,
        "unlogged_sent": 280,
        "unlogged_ok": 280,
        "logged_rows": 280,
        "unlogged_rows": 0,
    }
    doc = {
        "added_latency": added,
        "latency_ms": {"logged": overhead_stats.percentiles(on), "unlogged": overhead_stats.percentiles(off)},
        "durability_lag_ms": {"interleaved": lag, "backlog_slope_ms_per_s": 0.1},
        "verdict": overhead_stats.judge(added, lag, comp, overhead_stats.Limits()).as_dict(),
        "completeness": comp,
        "method": {"added_latency": "interleaved A/B"},
    }
    p95 = added["shift"]["p95"]
    details = {
        "added_p95_ms": p95["point"],
        "added_p95_ci_ms": [p95["low"], p95["high"]],
        "durability_lag_p95_ms": lag["p95"],
        "requests": 600,
        "throughput_rps": {"logged": 73.2, "unlogged": 68.8},
        "capacity_added_ms": overhead_stats.t_interval([0.41, 0.62, 0.35, 0.52]).as_dict(),
        "histogram": "overhead_histogram.png",
    }
    return doc, overhead_stats.histogram_png(on, off, lag_values), details


def waiver_file(entries: dict[str, dict[str, str]]) -> WaiverFile:
    """Waivers as POC-1/waivers.yml would hold them (parsed by the real parser)."""
    parsed, problems = parse(entries)
    return WaiverFile("waivers.yml", "ab" * 32, parsed, problems)


def build_bundle(
    evidence: Path,
    outcomes: dict[str, str | None] | None = None,
    causes: dict[str, str] | None = None,
    waivers: WaiverFile | None = None,
    secrets: tuple[str, ...] = (),
    started: str = STARTED,
) -> dict[str, Any]:
    """A bundle through the evidence API; ``outcomes`` default all passed, None = the check did not run.
    Returns the manifest as written."""
    outcomes = {**ALL_PASSED, **(outcomes or {})}
    causes = causes or {}
    bundle = EvidenceBundle(evidence, Redactor(secrets))
    bundle.prepare()
    records = []
    for spec in registry.CHECKS:
        outcome = outcomes.get(spec.id)
        if outcome is None:
            continue
        cause = causes.get(spec.id, f"{spec.id} broke (test)") if outcome != "passed" else None
        details = dict(DETAILS.get(spec.id, {}))
        names = list(spec.artifacts)
        if spec.id == "overhead":
            doc, png, details = overhead_document()
            bundle.write("overhead_benchmark.json", "json", doc, check="overhead", outcome=outcome)
            bundle.write("overhead_histogram.png", "binary", png, check="overhead", outcome=outcome)
        for name in spec.artifacts if spec.id != "overhead" else ():
            kind = "json" if name.endswith(".json") else "text"
            d = Document(name, kind, spec.id)
            if kind == "json":
                d["status"] = 200
            else:
                d.section(spec.title, f"what {spec.id} saw")
            bundle.write_document(d, outcome, cause)
        records.append(CheckResult(spec.id, spec.title, outcome, cause, names, 0.25, details))
    ids = [c.id for c in registry.CHECKS]
    manifest = build_manifest(
        run_id="20261201T094909Z-d2f172ff",
        started=started,
        finished="2026-12-01T09:49:31.352+00:00",
        target="local",
        hosts={"gateway": "10.231.0.18", "db": "10.231.0.19"},
        checks=records,
        required=ids,
        missing=[],
        artifacts=bundle.records.values(),
        versions=VERSIONS,
        waivers=waivers or WaiverFile(None, None),
        extra={"inventory": str(ROOT / "hosts.yml")},
    )
    bundle.write_manifest(manifest)
    return json.loads((evidence / "manifest.json").read_text())


CONFTEST = """
import json, os
from pathlib import Path
from types import SimpleNamespace
from acceptance.plugin import PLUGIN_KEY
pytest_plugins = ("evidence_writers.report",)

def pytest_configure(config):
    bundle = Path(os.environ["T_BUNDLE"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    config.stash[PLUGIN_KEY] = SimpleNamespace(manifest=manifest, ctx=SimpleNamespace(evidence_dir=bundle))
"""


def pytest_html_session(tmp_path: Path, bundle: Path) -> Path:
    """A real pytest + pytest-html run with the report plugin; returns report.html (in the bundle)."""
    suite = tmp_path / f"suite-{bundle.name}"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text(CONFTEST)
    (suite / "test_one.py").write_text("def test_one():\n    assert True\n")
    out = bundle / "report.html"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "T_BUNDLE": str(bundle),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HOME": str(tmp_path),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(suite),
            f"--html={out}",
            "--self-contained-html",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(suite),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def seal_and_pack(evidence: Path, signing_key: Path | None = None) -> Path:
    """What tools.validate does after the suite: validation.json, seal, tarball."""
    from evidence_writers import seal
    from tools import validate as V

    result = V.judge(evidence)
    V.write_validation(evidence, result, result.verdict, None, "no secret (test bundle)")
    seal.seal(evidence, result.manifest or {}, signing_key)
    return V.pack(evidence, result.run_id or "unknown")


def full_bundle(
    tmp_path: Path, name: str = "evidence", signing_key: Path | None = None, **kw: Any
) -> tuple[Path, Path]:
    """(directory, tarball) of a built bundle with its report, sealed and packed."""
    evidence = tmp_path / name
    build_bundle(evidence, **kw)
    pytest_html_session(tmp_path, evidence)
    return evidence, seal_and_pack(evidence, signing_key)


# --------------------------------------------------------------------------------------------------
# the real suite against a loopback target where nothing listens


@dataclass
class Nowhere:
    inventory: Path
    env: dict[str, str]  # the target's secrets, by the env names the inventory gives


def nowhere(tmp_path: Path, master: str | None = None) -> Nowhere:
    """An inventory group ``nowhere``: both hosts on a loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
        )
    (tmp_path / "known_hosts").write_text("")
    host = {
        "ansible_host": "127.0.0.1",
        "ansible_port": port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
    }
    inv = tmp_path / "nowhere.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "children": {
                        "nowhere": {
                            "hosts": {"gateway": host, "db": host},
                            "vars": {
                                "gateway_url": f"http://127.0.0.1:{port}",
                                "gateway_service": "litellm-gateway",
                                "db_port": port,
                                "db_name": "litellm_db",
                                "db_user": "litellm_user",
                                "db_reader_user": "poc1_reader",
                                "known_hosts_file": str(tmp_path / "known_hosts"),
                                "master_key_env": "T_NOWHERE_MASTER",
                                "db_reader_password_env": "T_NOWHERE_READER",
                            },
                        }
                    }
                }
            }
        )
    )
    return Nowhere(
        inv,
        {
            "T_NOWHERE_MASTER": master or "sk-nowhere-" + os.urandom(16).hex(),
            "T_NOWHERE_READER": os.urandom(12).hex(),
        },
    )


def validate_nowhere(
    tmp_path: Path,
    evidence: Path,
    *args: str,
    master: str | None = None,
    env_extra: dict[str, str] | None = None,
    timeout: float = 180,
) -> tuple[subprocess.CompletedProcess[str], Nowhere]:
    """``python -m tools.validate --hosts nowhere`` as a user runs it (a real NO-GO in a few seconds);
    the caller's POC1_* settings are not passed on, ``env_extra`` is."""
    target = nowhere(tmp_path, master)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "POC1_"))}
    env.update(target.env, LITELLM_LOCAL_MODEL_COST_MAP="True", **(env_extra or {}))
    cmd = [
        sys.executable,
        "-m",
        "tools.validate",
        "--hosts",
        "nowhere",
        f"--inventory={target.inventory}",
        f"--evidence-dir={evidence}",
        *args,
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout), target
