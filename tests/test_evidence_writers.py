"""Evidence writers, redaction, the bundle directory, manifest verdict and integrity (no lab needed)."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from evidence_writers import verdict as rule
from evidence_writers.bundle import MANIFEST, EvidenceBundle, EvidenceDirError, verify_bundle
from evidence_writers.manifest import build_manifest, versions_digest
from evidence_writers.redaction import MARK, Redactor, SecretLeak
from evidence_writers.result import CheckResult
from evidence_writers.writers import (
    Document,
    EvidenceWriter,
    JsonWriter,
    SqlResult,
    SqlTableWriter,
    TextWriter,
    writer_for,
)

MASTER = "sk-master-Zq9/\"quote\\slash+plus"
PASSWORD = "pw-reader-7f3a!@#"


@pytest.fixture()
def redactor() -> Redactor:
    return Redactor([MASTER, PASSWORD])


# --- redaction ------------------------------------------------------------------------------------------

def test_every_spelling_of_a_secret_is_redacted(redactor: Redactor) -> None:
    from urllib.parse import quote
    text = (f"raw {MASTER} json {json.dumps(MASTER)} url {quote(MASTER, safe='')} "
            f"dsn postgresql://poc1_reader:{PASSWORD}@10.231.0.19/litellm_db")
    out = redactor.text(text)
    assert MASTER not in out and PASSWORD not in out
    assert json.dumps(MASTER)[1:-1] not in out and quote(MASTER, safe="") not in out
    assert redactor.leaks(out) == []
    assert "postgresql://poc1_reader:***@10.231.0.19/litellm_db" in out


def test_token_shapes_are_redacted_even_when_unknown() -> None:
    r = Redactor()
    out = r.text("Authorization: Bearer abc.def-123 then bearer xyz; "
                 "mysql://u:p4ss@h/db and sk-ABCDEFGHIJKLMNOPQRST")
    assert "abc.def-123" not in out and "xyz" not in out and "p4ss" not in out
    assert "ABCDEFGHIJKLMNOPQRST" not in out
    assert out.count(MARK) == 4


def test_shell_variable_references_are_kept() -> None:
    line = 'curl -H "Authorization: Bearer ${POC1_LAB_MASTER_KEY}" http://10.231.0.18:4000'
    assert Redactor(["irrelevant-secret"]).text(line) == line


def test_longest_secret_wins_over_its_prefix() -> None:
    r = Redactor(["abcd1234", "abcd1234-longer"])
    assert r.text("x abcd1234-longer y abcd1234 z") == f"x {MARK} y {MARK} z"


def test_structures_are_redacted_in_keys_and_values(redactor: Redactor) -> None:
    obj = {MASTER: [PASSWORD, {"nested": f"Bearer {MASTER}"}], "n": 5, "none": None}
    out = json.dumps(redactor.obj(obj))
    assert MASTER not in out and PASSWORD not in out and '"n": 5' in out


def test_assert_clean_reports_lengths_never_values(redactor: Redactor) -> None:
    with pytest.raises(SecretLeak) as err:
        redactor.assert_clean(f"oops {PASSWORD}", where="x.txt")
    assert PASSWORD not in str(err.value) and "x.txt" in str(err.value)


# --- writers --------------------------------------------------------------------------------------------

def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind,content", [
    ("text", ["line with " + MASTER, f"Authorization: Bearer {MASTER}"]),
    ("json", {"headers": {"Authorization": f"Bearer {MASTER}"}, "dsn": f"postgresql://u:{PASSWORD}@h/d"}),
    ("sql", [SqlResult("t", "SELECT 1", ["secret"], [(MASTER,), (PASSWORD,)])]),
])
def test_each_writer_redacts_and_reports_true_hash(tmp_path: Path, redactor: Redactor, kind: str,
                                                   content: Any) -> None:
    path = tmp_path / f"a.{kind}"
    written = writer_for(kind, redactor).write(path, content)
    data = path.read_bytes()
    assert MASTER.encode() not in data and PASSWORD.encode() not in data
    assert json.dumps(MASTER)[1:-1].encode() not in data
    assert written.sha256 == _sha(path) and written.size == len(data)
    assert MARK.encode() in data


def test_a_new_writer_kind_cannot_skip_redaction(tmp_path: Path, redactor: Redactor) -> None:
    class Sneaky(EvidenceWriter):
        kind = "sneaky"

        def render(self, content: Any) -> str:  # ignores the redacted content it is given
            return f"leaked {MASTER} and {PASSWORD}"

    Sneaky(redactor).write(tmp_path / "s.txt", "whatever")
    assert (tmp_path / "s.txt").read_text() == f"leaked {MARK} and {MARK}"


def test_json_writer_handles_dates_and_decimals(tmp_path: Path, redactor: Redactor) -> None:
    import decimal
    p = tmp_path / "d.json"
    JsonWriter(redactor).write(p, {"t": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
                                   "c": decimal.Decimal("0.00046")})
    assert json.loads(p.read_text()) == {"t": "2026-01-02T03:04:05+00:00", "c": "0.00046"}


def test_sql_table_renders_like_psql(redactor: Redactor) -> None:
    text = SqlTableWriter(redactor).render([
        "# note",
        SqlResult("newest", "SELECT id, v FROM t", ["id", "v"], [(1, None), (22, "x" * 200), (3, {"a": 1})]),
    ])
    lines = text.splitlines()
    assert lines[0] == "# note"
    assert "-- newest" in lines and "-- SELECT id, v FROM t" in lines
    header = next(ln for ln in lines if ln.startswith(" id"))
    assert header.split("|")[0].strip() == "id"
    assert " 1  | NULL" in text and '{"a":1}' in text and "(3 rows)" in text
    assert max(len(ln) for ln in lines) < 100  # long cells are truncated
    one = SqlTableWriter(redactor).render(SqlResult("one", "SELECT 1", ["a"], [(1,)]))
    assert "(1 row)" in one


def test_unknown_kind_is_refused(redactor: Redactor) -> None:
    with pytest.raises(ValueError, match="unknown artifact kind"):
        writer_for("pdf", redactor)


def test_document_footer_states_the_outcome() -> None:
    text_doc = Document("a.txt", "text", "service_status").section("status", "active")
    assert text_doc.content("failed", "down")[-1] == "== check service_status: FAILED: down"
    json_doc = Document("b.json", "json", "chat_call")
    json_doc["status"] = 200
    assert json_doc.content("passed", None) == {"status": 200, "check": {"id": "chat_call",
                                                                       "outcome": "passed", "cause": None}}


# --- bundle directory -------------------------------------------------------------------------------------

def test_bundle_cleans_its_own_previous_run_only(tmp_path: Path, redactor: Redactor) -> None:
    d = tmp_path / "evidence"
    d.mkdir()
    (d / ".gitkeep").write_text("")
    b = EvidenceBundle(d, redactor)
    b.prepare()
    b.write("old.txt", "text", "previous run", check="x")
    (d / "sub").mkdir()
    (d / "sub" / "f").write_text("nested")
    EvidenceBundle(d, redactor).prepare()
    assert sorted(p.name for p in d.iterdir()) == [".gitkeep", ".poc1-evidence"]


def test_bundle_refuses_to_empty_a_foreign_directory(tmp_path: Path, redactor: Redactor) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(EvidenceDirError, match="not made by this suite"):
        EvidenceBundle(tmp_path, redactor).prepare()
    assert (tmp_path / "precious.txt").exists()


@pytest.mark.parametrize("name", ["../x.txt", "a/b.txt", ".hidden", MANIFEST, ""])
def test_artifact_names_stay_inside_the_bundle(tmp_path: Path, redactor: Redactor, name: str) -> None:
    with pytest.raises(ValueError):
        EvidenceBundle(tmp_path, redactor).write(name, "text", "x", check="c")


def _bundle_with_manifest(tmp_path: Path, redactor: Redactor) -> Path:
    d = tmp_path / "ev"
    b = EvidenceBundle(d, redactor)
    b.prepare()
    b.write_document(Document("service_status.txt", "text", "service_status").add("ok"), "passed", None)
    b.write("chat_call.json", "json", {"status": 200}, check="chat_call", outcome="passed")
    checks = [CheckResult("service_status", "t", "passed", artifacts=["service_status.txt"])]
    b.write_manifest(build_manifest(
        run_id="r", started="s", finished="f", target="local", hosts={"gateway": "10.231.0.18"},
        checks=checks, required=["service_status"], missing=["overhead"], artifacts=b.records.values(),
        versions={"x": 1}))
    return d


def test_manifest_hashes_match_and_tampering_is_detected(tmp_path: Path, redactor: Redactor) -> None:
    d = _bundle_with_manifest(tmp_path, redactor)
    assert verify_bundle(d) == []
    m = json.loads((d / MANIFEST).read_text())
    assert {a["path"] for a in m["artifacts"]} == {"service_status.txt", "chat_call.json"}
    (d / "chat_call.json").write_text('{"status": 500}\n')
    (d / "stray.txt").write_text("not listed")
    (d / "service_status.txt").unlink()
    problems = verify_bundle(d)
    assert any("chat_call.json" in p and ("sha256" in p or "size" in p) for p in problems)
    assert "stray.txt: present but not in the manifest" in problems
    assert "service_status.txt: listed but missing" in problems


# --- verdict ----------------------------------------------------------------------------------------------

def _checks(**outcomes: str) -> list[CheckResult]:
    return [CheckResult(k, k, v) for k, v in outcomes.items()]


def verdict(checks: list[CheckResult], required: list[str]) -> tuple[str, list[str]]:
    """The one rule over results (what build_manifest records): verdict and required checks not run."""
    decision = rule.decide({c.id: c.outcome for c in checks}, required)
    return decision.verdict, list(decision.not_run)


FIVE = ["service_status", "gateway_db_connect", "chat_call", "db_rows", "join_check"]


def test_go_only_when_every_implemented_check_ran_and_passed() -> None:
    assert verdict(_checks(**{c: "passed" for c in FIVE}), FIVE) == ("GO", [])
    assert verdict(_checks(**{c: "passed" for c in FIVE[:4]}), FIVE) == ("NO-GO", ["join_check"])
    assert verdict(_checks(**{**{c: "passed" for c in FIVE}, "db_rows": "failed"}), FIVE)[0] == "NO-GO"
    assert verdict(_checks(**{**{c: "passed" for c in FIVE}, "chat_call": "skipped"}), FIVE)[0] == "NO-GO"
    assert verdict([], [])[0] == "NO-GO"
    # once check 6 exists it is required like the others
    assert verdict(_checks(**{c: "passed" for c in FIVE}), FIVE + ["overhead"]) == ("NO-GO", ["overhead"])


def test_manifest_keeps_the_contract_keys() -> None:
    m = build_manifest(run_id="r", started="s", finished="f", target="local",
                       hosts={"gateway": "a", "db": "b"}, checks=_checks(service_status="passed"),
                       required=["service_status"], missing=["overhead"], artifacts=[],
                       versions={"b": 2, "a": 1})
    for key in ("run_id", "started", "finished", "target", "hosts", "verdict", "checks", "artifacts",
                "versions", "versions_digest"):
        assert key in m
    # the one verdict rule (evidence_writers/verdict.py): a registered check with no implementation was
    # not measured, so it blocks GO like a check that did not run
    assert m["verdict"] == "NO-GO" and m["missing_checks"] == ["overhead"]
    assert "not run: overhead" in m["verdict_basis"] and "not implemented: overhead" in m["verdict_basis"]
    assert [c["id"] for c in m["required_checks"]] == ["service_status", "overhead"]
    assert set(m["checks"][0]) == {"id", "title", "outcome", "cause", "artifacts", "duration_s"}
    assert versions_digest({"a": 1, "b": 2}) == m["versions_digest"] != versions_digest({"a": 1, "b": 3})
    complete = build_manifest(run_id="r", started="s", finished="f", target="local", hosts={},
                              checks=_checks(service_status="passed"), required=["service_status"],
                              missing=[], artifacts=[], versions={})
    assert complete["verdict"] == "GO" and complete["verdict_basis"] == "1 of 1 registered checks passed"


def test_text_writer_appends_newline(redactor: Redactor, tmp_path: Path) -> None:
    TextWriter(redactor).write(tmp_path / "t.txt", "no newline")
    assert (tmp_path / "t.txt").read_text() == "no newline\n"


# --- the whole suite against a target that is not there (loopback, closed ports; no lab needed) ---------

def test_unreachable_target_fails_every_check_fast_leaves_every_artifact_and_no_secret(
        tmp_path: Path) -> None:
    import socket
    import subprocess

    import yaml

    from tests.support.acceptance_run import run_suite

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    (tmp_path / "known_hosts").write_text("")
    host = {"ansible_host": "127.0.0.1", "ansible_port": port, "ansible_user": "root",
            "ansible_ssh_private_key_file": str(key)}
    inv = tmp_path / "inv.yml"
    inv.write_text(yaml.safe_dump({"all": {"children": {"nowhere": {
        "hosts": {"gateway": host, "db": host},
        "vars": {"gateway_url": f"http://127.0.0.1:{port}", "gateway_service": "litellm-gateway",
                 "db_port": port, "db_name": "litellm_db", "db_user": "litellm_user",
                 "db_reader_user": "poc1_reader", "known_hosts_file": str(tmp_path / "known_hosts"),
                 "master_key_env": "T_NOWHERE_MASTER", "db_reader_password_env": "T_NOWHERE_READER"}}}}}))
    secrets = {"T_NOWHERE_MASTER": "sk-nowhere-" + os.urandom(16).hex(),
               "T_NOWHERE_READER": os.urandom(12).hex()}
    evidence = tmp_path / "evidence"
    five = [f"acceptance/check_{c}.py" for c in FIVE]
    run = run_suite(evidence, *five, hosts="nowhere", inventory=inv, env=secrets, timeout=120)

    assert run.rc == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.outcomes() == {c: "failed" for c in FIVE}
    causes = {c["id"]: c["cause"] for c in run.manifest["checks"]}
    assert "Connection refused" in causes["service_status"]
    assert "ssh gateway (127.0.0.1" in causes["service_status"]
    assert causes["db_rows"].startswith("no call to look for: chat_call failed")
    assert all("\n" not in c for c in causes.values())
    assert run.wall_s < 30 and "Traceback" not in run.stdout
    assert verify_bundle(evidence) == []
    assert run.manifest["verdict"] == "NO-GO"
    names = {p.name for p in evidence.iterdir()}
    assert {"service_status.txt", "gateway_db_connect.log", "chat_call.json", "requests_head.txt",
            "responses_head.txt", "join_check.txt", "manifest.json"} <= names
    for where, data in [(p.name, p.read_bytes()) for p in run.files()] + [("stdout", run.stdout.encode()),
                                                                          ("stderr", run.stderr.encode())]:
        for value in secrets.values():
            assert value.encode() not in data, f"secret leaked into {where}"
    chat = json.loads((evidence / "chat_call.json").read_text())
    assert "${T_NOWHERE_MASTER}" in chat["curl"]
    assert chat["request"]["headers"]["Authorization"] == "Bearer ***"


# --- redaction before any truncation ---------------------------------------------------------------------

def _prefixes(secret: str, shortest: int = 4) -> list[str]:
    return [secret[:k] for k in range(shortest, len(secret) + 1)]


def test_a_secret_at_any_offset_of_a_long_value_never_survives_a_cut(tmp_path) -> None:  # noqa: ANN001
    """Every place that shortens text for evidence — a SQL cell, a one-line cause, a clipped body or
    journal tail — must redact first: a secret cut in half is no longer recognised, and its head would
    land in the artifact. The secret is put at every offset of a value longer than each limit."""
    from evidence_writers import redaction
    from evidence_writers.redaction import Redactor, clip
    from evidence_writers.writers import MAX_CELL, SqlResult, SqlTableWriter
    from fixtures.errors import one_line

    secret = "pw-" + "Q7x9Lm2Vb8" * 3  # no "sk-" / URL shape: only the run's known value can catch it
    red = Redactor([secret])
    redaction.use(red)
    try:
        writer = SqlTableWriter(red)
        for limit, cut in ((MAX_CELL, None), (300, one_line), (200, lambda t, n: clip(t, n)),
                           (120, lambda t, n: clip(t, n, keep="tail"))):
            for offset in range(0, limit + 10):
                value = "a" * offset + secret + "z" * (limit + 40)
                if cut is None:  # through the writer, as an artifact is written
                    writer.write(tmp_path / "t.txt", SqlResult(title="t", sql="s", columns=["v"], rows=[(value,)]))
                    out = (tmp_path / "t.txt").read_text()
                else:
                    out = cut(value, limit)
                leaked = [p for p in _prefixes(secret) if p in out]
                assert not leaked, (limit, offset, len(leaked[-1]))
                tail = "z" * (limit + 40) + secret + "a" * offset  # the secret near the kept end
                if cut is None:
                    writer.write(tmp_path / "t.txt", SqlResult(title="t", sql="s", columns=["v"], rows=[(tail,)]))
                    out = (tmp_path / "t.txt").read_text()
                else:
                    out = cut(tail, limit)
                assert not [p for p in _prefixes(secret[::-1]) if p[::-1] in out and len(p) >= 6], (limit, offset)
    finally:
        redaction.use(Redactor())
