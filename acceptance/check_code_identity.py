"""Check 9: what runs on the gateway is what is signed — the repository's code, and nothing changed under
the running process.

The versions lock has long recorded whether the gateway's files equal the repository's, but the verdict
ignored it: a gateway running an edited gateway_logger.py signed off GO. Two facts decide here:

1. the sha256 of ``db_init.py``, ``config.yaml`` and every file of the ``gateway_logger/`` package on
   the gateway equals the repository's (the files the suite's commit signs), and the package has no file
   the repository's lacks; the logger's ``code_sha256`` (sha256 over the package's files and db_init.py,
   see gateway_logger/identity.py: what its ``build_info`` metric and start line say) is shown for both;
2. no file of the app directory, the config or the gateway's venv (``*.pyc`` aside: Python writes them
   at import) changed after the unit's main process started: Python keeps what it imported, so a file
   edited — or a package upgraded — under a running process is not what the process runs.

Artifact code_identity.txt: both hash lists, the start time of the process, every file changed since.
"""
from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import PurePosixPath

from acceptance import systemd, versions
from acceptance.spec import CheckSpec
from evidence_writers.result import CheckResult
from fixtures.context import Hosts, RunContext
from fixtures.errors import CheckFailure
from fixtures.inventory import Target

CHECK = CheckSpec("code_identity", "The gateway runs the repository's code, unchanged since it started",
                  order=9, artifacts=("code_identity.txt",))
pytestmark = CHECK.mark

#: at most this many changed files are named (the artifact lists up to CHANGED_LISTED)
CHANGED_NAMED, CHANGED_LISTED = 3, 50
#: files written within this many seconds of the start count as part of it (see below)
START_SLACK_S = 2


def changed_since_cmd(paths: list[str], since_epoch: int) -> str:
    """Files under ``paths`` modified after ``since_epoch``, bytecode caches excluded."""
    quoted = " ".join(shlex.quote(p) for p in paths)
    return (f"find {quoted} -xdev -type f -newermt @{since_epoch} ! -name '*.pyc' "
            f"! -path '*/__pycache__/*' 2>/dev/null | sort -u | head -n {CHANGED_LISTED + 1}")


def test_code_identity(target: Target, hosts: Hosts, run: RunContext, evidence: CheckResult) -> None:
    doc = evidence.text("code_identity.txt")
    v = target.vars
    unit = str(v["gateway_service"])
    gw = target.gateway
    doc.add(f"# what runs on gateway {gw.address} ({unit}) against the repository at "
            f"{versions.git_commit().get('commit', 'unknown commit')}")
    on_gateway = versions.gateway_versions(target, hosts)  # this gateway host's files, not the first's
    if "error" in on_gateway:
        raise CheckFailure(f"gateway {gw.address}: cannot read its code: {on_gateway['error']}")
    repo = versions.repo_files()
    have = on_gateway["files"]
    paths = on_gateway["paths"]
    rows = [f"{name}: repository {str(repo.get(name, 'none'))[:16]}…  gateway {str(have.get(name))[:16]}…  "
            f"({paths.get(name, name)})" for name in [*repo, *sorted(set(have) - set(repo))]]
    codes = {"repository": versions.code_sha256(repo), "gateway": on_gateway.get("code_sha256")}
    rows.append(f"code_sha256 (the logger's: gateway_logger/*.py, db_init.py): repository "
                f"{codes['repository']}  gateway {codes['gateway']}")
    doc.section("sha256 of the signed files", rows)
    differ = [f"{paths.get(name, name)} ({what})" for name, what in versions.differences(repo, have)]
    if len(differ) > CHANGED_NAMED:
        differ[CHANGED_NAMED:] = [f"and {len(differ) - CHANGED_NAMED} more file(s)"]
    if differ and codes["gateway"] != codes["repository"]:
        differ[-1] += (f"; code_sha256 {str(codes['gateway'])[:12]}, the repository's "
                       f"{str(codes['repository'])[:12]}")
    doc.section("packages in the gateway's venv now",
                [f"{k}: {on_gateway.get(k)}" for k in ("python", "litellm", "sqlalchemy", "psycopg2")])

    session = hosts.gateway
    props, _ = session.service(unit).show(("MainPID", "ExecMainStartTimestamp", "ActiveState"))
    started = systemd.epoch(props.get("ExecMainStartTimestamp"))
    started_at = (datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds")
                  if started else "unknown")
    changed: list[str] = []
    if started and props.get("ActiveState") == "active":
        python = PurePosixPath(str(v["gateway_python"]))
        venv = str(python.parent.parent)
        watched = [str(v["gateway_app_dir"]), str(v["gateway_config_path"]), venv]
        # systemd's start time has whole seconds and a deploy writes its files just before the start
        found = session.run(changed_since_cmd(watched, int(started) + START_SLACK_S), timeout=30)
        changed = [ln for ln in found.stdout.splitlines() if ln.strip()]
        doc.section(f"files changed after the main process (pid {props.get('MainPID')}) started at "
                    f"{started_at}", changed[:CHANGED_LISTED] or ["none"])
    else:
        doc.section("files changed under the running process", [f"not judged: {unit} is "
                                                                f"{props.get('ActiveState')} (check 1)"])
    evidence.details.update(files_match=versions.files_match(repo, have), code_sha256=codes,
                            changed_since_start=len(changed), main_started=started,
                            litellm=on_gateway.get("litellm"), sqlalchemy=on_gateway.get("sqlalchemy"))

    causes = []
    if differ:
        causes.append(f"gateway {gw.address} runs code other than the repository's: " + "; ".join(differ))
    if changed:
        more = f" and {len(changed) - CHANGED_NAMED} more" if len(changed) > CHANGED_NAMED else ""
        count = str(len(changed)) if len(changed) <= CHANGED_LISTED else f"over {CHANGED_LISTED}"
        causes.append(f"{count} file(s) "
                      f"changed under the running {unit} (started {started_at}): "
                      f"{', '.join(changed[:CHANGED_NAMED])}{more} — it runs what it loaded before, "
                      "restart it to run what is on disk")
    if causes:
        raise CheckFailure("; ".join(causes))
