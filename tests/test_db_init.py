"""db_init.py create/validate against a real PostgreSQL: clean schema, every kind of drift, bad URLs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

import db_init

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "db_init.py"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def execute(url: str, *statements: str) -> None:
    engine = db_init.make_engine(url)
    with engine.begin() as conn:
        for s in statements:
            conn.execute(text(s))
    engine.dispose()


def test_create_then_validate_is_clean_and_idempotent(fresh_db: str) -> None:
    assert run_cli("create", "--url", fresh_db).returncode == 0
    second = run_cli("create", "--url", fresh_db)
    assert second.returncode == 0, second.stderr
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "matches the models" in result.stdout


def test_url_from_environment(fresh_db: str) -> None:
    import os
    env = dict(os.environ, **{db_init.URL_ENV: fresh_db})
    assert run_cli("create", env=env).returncode == 0
    assert run_cli("validate", env=env).returncode == 0


DRIFTS = [
    ("ALTER TABLE responses DROP COLUMN cost", "responses: missing column cost"),
    ("ALTER TABLE requests ALTER COLUMN status_code TYPE bigint",
     "requests: column status_code type is BIGINT, expected INTEGER"),
    ("ALTER TABLE requests ALTER COLUMN payload TYPE json",
     "requests: column payload type is JSON, expected JSONB"),
    ("ALTER TABLE requests ALTER COLUMN start_time TYPE timestamp",
     "requests: column start_time type is TIMESTAMP WITHOUT TIME ZONE, expected TIMESTAMP WITH TIME ZONE"),
    ("ALTER TABLE requests ALTER COLUMN route TYPE varchar(64)",
     "requests: column route type is VARCHAR(64), expected VARCHAR(255)"),
    ("DROP INDEX ix_requests_model", "requests: missing index ix_requests_model on (model)"),
    ("DROP INDEX ix_requests_created_at", "requests: missing index ix_requests_created_at on (created_at)"),
    ("DROP INDEX ix_responses_request_id_fk",
     "responses: missing index ix_responses_request_id_fk on (request_id_fk)"),
    ("CREATE INDEX ix_extra_route ON requests (route)", "requests: extra index ix_extra_route on (route)"),
    ("DROP INDEX ix_requests_request_id; CREATE INDEX ix_requests_request_id ON requests (request_id)",
     "requests: index ix_requests_request_id is not unique on (request_id), expected unique on (request_id)"),
    ("ALTER TABLE requests ADD CONSTRAINT uq_call_id UNIQUE (call_id)",
     "requests: extra unique constraint uq_call_id on (call_id)"),
    ("ALTER TABLE requests ALTER COLUMN request_id DROP NOT NULL",
     "requests: column request_id nullability differs: is NULL, expected NOT NULL"),
    ("ALTER TABLE requests ALTER COLUMN route SET NOT NULL",
     "requests: column route nullability differs: is NOT NULL, expected NULL"),
    ("ALTER TABLE requests ALTER COLUMN created_at DROP DEFAULT",
     "requests: column created_at server default is none, expected now()"),
    ("ALTER TABLE responses ALTER COLUMN created_at SET DEFAULT '2000-01-01 00:00:00+00'",
     "responses: column created_at server default is '2000-01-01 00:00:00+00'::timestamp with time zone, "
     "expected now()"),
    ("ALTER TABLE requests ALTER COLUMN route SET DEFAULT 'x'",
     "requests: column route server default is 'x'::character varying, expected none"),
    ("ALTER TABLE requests ADD COLUMN extra_col text", "requests: extra column extra_col"),
    ("CREATE TABLE stray (id int)", "stray: extra table (not in the models)"),
    ("DROP TABLE responses", "responses: missing table"),
    ("ALTER TABLE responses DROP CONSTRAINT responses_pkey", "responses: primary key is [], expected ['id']"),
]


def drift_lines(stdout: str) -> list[str]:
    return [line.removeprefix("  - ") for line in stdout.splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize(("ddl", "expected"), DRIFTS, ids=[d[1] for d in DRIFTS])
def test_each_drift_is_named(fresh_db: str, ddl: str, expected: str) -> None:
    """One change, exactly one line naming it (the parts of a missing table are not repeated)."""
    db_init.create(fresh_db)
    execute(fresh_db, ddl)
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 1, result.stdout + result.stderr
    assert drift_lines(result.stdout) == [expected], result.stdout


def test_equivalent_or_foreign_objects_are_not_drift(fresh_db: str) -> None:
    """No false drift: a default the server evaluates equal to the models' now(), other schemas and
    views are outside the comparison; alembic's version table is not an extra table."""
    db_init.create(fresh_db)
    execute(fresh_db, "ALTER TABLE requests ALTER COLUMN created_at SET DEFAULT CURRENT_TIMESTAMP",
            "CREATE SCHEMA other", "CREATE TABLE other.requests (id text)",
            "CREATE VIEW recent AS SELECT 1 AS one")
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 0, result.stdout + result.stderr


def _fk_name(url: str) -> str:
    engine = db_init.make_engine(url)
    with engine.connect() as conn:
        name = conn.execute(text(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'responses'::regclass AND contype = 'f'"
        )).scalar_one()
    engine.dispose()
    return name


def test_dropped_foreign_key_is_named(fresh_db: str) -> None:
    assert run_cli("create", "--url", fresh_db).returncode == 0
    execute(fresh_db, f"ALTER TABLE responses DROP CONSTRAINT {_fk_name(fresh_db)}")
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 1
    assert drift_lines(result.stdout) == ["responses: missing foreign key (request_id_fk) -> requests(id)"]


@pytest.mark.parametrize(("options", "expected"), [
    ("", "is ON DELETE NO ACTION, expected ON DELETE CASCADE"),
    ("ON DELETE CASCADE DEFERRABLE", "is DEFERRABLE, expected NOT DEFERRABLE"),
])
def test_foreign_key_options_are_named(fresh_db: str, options: str, expected: str) -> None:
    """alembic reports a changed FK option (ON DELETE among them) as the FK removed and added: one line."""
    assert run_cli("create", "--url", fresh_db).returncode == 0
    fk = _fk_name(fresh_db)
    execute(fresh_db, f"ALTER TABLE responses DROP CONSTRAINT {fk}",
            f"ALTER TABLE responses ADD CONSTRAINT {fk} FOREIGN KEY (request_id_fk) "
            f"REFERENCES requests(id) {options}")
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 1
    fk_line = f"responses: foreign key (request_id_fk) -> requests(id) {expected}"
    assert drift_lines(result.stdout) == [fk_line]


def test_cascade_really_deletes_responses(fresh_db: str) -> None:
    db_init.create(fresh_db)
    engine = db_init.make_engine(fresh_db)
    from sqlalchemy.orm import Session
    with Session(engine) as s, s.begin():
        req = db_init.Request(request_id="r1", call_id="c1", route="/x", status_code=200)
        req.responses.append(db_init.Response(latency_ms=1))
        s.add(req)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM requests"))
        assert conn.execute(text("SELECT count(*) FROM responses")).scalar_one() == 0
    engine.dispose()


def test_wrong_password_exits_2_without_the_password(pg, fresh_db: str) -> None:
    secret = "Wr0ngPassw0rd-XYZ"
    url = fresh_db.replace(pg.password, secret)
    result = run_cli("validate", "--url", url)
    assert result.returncode == 2
    out = result.stdout + result.stderr
    assert "password authentication failed" in out
    assert secret not in out and pg.password not in out
    assert len(out.strip().splitlines()) == 1


def test_missing_database_exits_2(pg) -> None:
    result = run_cli("validate", "--url", pg.url("no_such_db"))
    assert result.returncode == 2
    assert 'database "no_such_db" does not exist' in result.stderr
    assert pg.password not in result.stdout + result.stderr


def test_unreachable_host_exits_2_quickly(pg) -> None:
    from tests.support.pgserver import free_port
    url = f"postgresql+psycopg2://u:SecretPw1@127.0.0.1:{free_port()}/x"
    result = run_cli("validate", "--url", url)
    assert result.returncode == 2
    assert "SecretPw1" not in result.stdout + result.stderr
    assert "127.0.0.1" in result.stderr


@pytest.mark.parametrize("url", ["not a url", ""])
def test_malformed_or_missing_url_exits_2(url: str) -> None:
    import os
    env = {k: v for k, v in os.environ.items() if k != db_init.URL_ENV}
    result = run_cli("validate", "--url", url, env=env) if url else run_cli("validate", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("db_init:")


#: the schema of a POC-1 database made before migrations (revision 0001): the seed's columns only
BASELINE_DDL = (
    "DROP TABLE alembic_version",
    "DROP INDEX ix_requests_call_id",
    "ALTER TABLE requests DROP COLUMN call_id",
)


def test_existing_poc1_database_is_migrated_keeping_its_rows(fresh_db: str) -> None:
    assert run_cli("create", "--url", fresh_db).returncode == 0
    execute(fresh_db, *BASELINE_DDL,
            "INSERT INTO requests (request_id, status_code) VALUES ('old-call-1', 200), ('old-call-2', 500)",
            "INSERT INTO responses (request_id_fk, total_tokens) SELECT id, 7 FROM requests")
    before = run_cli("validate", "--url", fresh_db)
    assert before.returncode == 1
    assert {"requests: missing column call_id", "requests: missing index ix_requests_call_id on (call_id)"} \
        <= set(drift_lines(before.stdout))
    assert "schema revision is none (made before migrations)" in before.stdout

    migrated = run_cli("create", "--url", fresh_db)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated" in migrated.stdout and "0001 -> 0002" in migrated.stdout
    assert run_cli("validate", "--url", fresh_db).returncode == 0
    engine = db_init.make_engine(fresh_db)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT request_id, call_id, (SELECT count(*) FROM responses r "
                                 "WHERE r.request_id_fk = q.id) FROM requests q ORDER BY id")).all()
    engine.dispose()
    assert [tuple(r) for r in rows] == [("old-call-1", "old-call-1", 1), ("old-call-2", "old-call-2", 1)]
    again = run_cli("create", "--url", fresh_db)
    assert again.returncode == 0 and "migrated" not in again.stdout


def test_database_behind_head_is_drift(fresh_db: str) -> None:
    assert run_cli("create", "--url", fresh_db).returncode == 0
    execute(fresh_db, "UPDATE alembic_version SET version_num = '0001'")
    result = run_cli("validate", "--url", fresh_db)
    assert result.returncode == 1
    assert f"schema revision is 0001, expected {db_init.head_revision()}" in result.stdout
