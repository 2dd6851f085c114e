"""A real LiteLLM proxy (``litellm --config <repo>/config.yaml``) and the stand-in model, for tests.

Both run as child processes on free 127.0.0.1 ports with the environment the deploy unit gives the
gateway (random master key, ``POC1_DB_URL``, ``UPSTREAM_API_*``, ``LITELLM_LOCAL_MODEL_COST_MAP``).
The gateway's stdout/stderr go to a file, so tests can read the logger's journal lines. Start to the
first 200 takes ~8 s: start it once per module.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.support.pgserver import free_port
from tools.polling import poll_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
STANDIN = ROOT / "lab" / "standin_model.py"
MODEL = "gpt-4o-mini"


#: a request whose message contains this gets HTTP 500 from the stand-in the first time it is seen; the
#: gateway's router retries it (config.yaml keeps LiteLLM's default: x-litellm-max-retries: 2)
FAIL_ONCE = "[fail-once]"

#: runs lab/standin_model.py with two test-only changes. TCP_NODELAY: the stand-in writes headers and
#: body separately; with Nagle on, the body waits for the gateway's delayed ACK (~40 ms per call), which
#: would swamp every latency figure. FAIL_ONCE: a provider that fails a call's first attempt.
STANDIN_LAUNCHER = f"""
import runpy, socketserver, sys
socketserver.StreamRequestHandler.disable_nagle_algorithm = True
sys.argv = [{str(STANDIN)!r}] + sys.argv[1:]
standin = runpy.run_path({str(STANDIN)!r}, run_name="standin")
import io, json
seen, answer = set(), standin["Handler"].do_POST

def do_POST(self):
    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
    try:
        said = json.dumps(json.loads(body).get("messages"))
    except (ValueError, AttributeError):
        said = ""
    if {FAIL_ONCE!r} in said and said not in seen:
        seen.add(said)
        self._send(500, {{"error": {{"message": "stand-in: first attempt fails", "type": "server_error"}}}})
        return
    connection, self.rfile = self.rfile, io.BytesIO(body)  # the body again for the stand-in's own handler
    try:
        answer(self)
    finally:
        self.rfile = connection  # keep-alive: the next request comes on the same connection

standin["Handler"].do_POST = do_POST
standin["main"]()
"""


class GatewayStartError(RuntimeError):
    pass


#: what the gateway's app directory holds for the logger (/opt/litellm on the gateway: the package and the
#: schema beside it, on the unit's PYTHONPATH)
APP_ENTRIES = ("gateway_logger", "db_init.py")


def app_dir(directory: Path) -> Path:
    """``directory`` made the gateway's app directory: links to the repository's logger package and
    db_init.py, and nothing else (the repository's root on sys.path would put its ``tests``, ``lab``,
    ``tools`` ... packages in the proxy's way)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in APP_ENTRIES:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name)
    return directory


def config_copy(directory: Path, models: Mapping[str, Mapping[str, object]],
                router_settings: Mapping[str, object] | None = None) -> Path:
    """config.yaml plus test-only model groups, in ``directory``.

    Each group in ``models`` is a copy of the chat model's deployment with those ``litellm_params``
    changed (e.g. ``rpm`` or ``timeout``). The logger is found as in production: LiteLLM imports the
    package from the proxy's PYTHONPATH (``Gateway.proxy_env``), wherever the config file is."""
    config = yaml.safe_load(CONFIG.read_text())
    chat = next(m for m in config["model_list"] if m["model_name"] == MODEL)
    config["model_list"] += [{"model_name": name, "litellm_params": {**chat["litellm_params"], **params}}
                             for name, params in models.items()]
    if router_settings:
        config["router_settings"] = dict(router_settings)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _wait_http(url: str, proc: subprocess.Popen, timeout: float) -> None:
    def answers() -> bool:
        if proc.poll() is not None:
            raise GatewayStartError(f"{url}: process exited with {proc.returncode} before answering")
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    if poll_until(answers, timeout=timeout, interval=0.2)[0]:
        return
    raise GatewayStartError(f"{url}: no 200 within {timeout:.0f}s")


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    """Stop one child we started (its own process group), escalating to SIGKILL after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return proc.poll()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(5)


@dataclass
class Gateway:
    """``Gateway(db_url).start()``; ``.url``, ``.headers``, ``.log_text()``, ``.stop()``."""

    db_url: str
    env: dict[str, str] = field(default_factory=dict)  # extra env, e.g. POC1_LOGGER_* settings
    config: Path = CONFIG
    port: int = field(default_factory=free_port)
    standin_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    master_key: str = field(default_factory=lambda: "sk-" + secrets.token_hex(16))
    #: ``litellm --num_workers``: 1 runs the app in the CLI process; more spawns uvicorn worker processes
    num_workers: int = 1
    upstream_key: str = field(default_factory=lambda: "sk-upstream-" + secrets.token_hex(8))
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="poc1-gw-")))
    proxy: subprocess.Popen | None = None
    standin: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    @property
    def spool_dir(self) -> Path:
        return self.workdir / "spool"

    @property
    def log_path(self) -> Path:
        return self.workdir / "gateway.log"

    @property
    def app_path(self) -> Path:
        """The proxy's PYTHONPATH: the logger package and db_init.py, as /opt/litellm on the gateway."""
        return self.workdir / "app"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def proxy_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "LITELLM_LOG")}
        env.update(
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_MASTER_KEY=self.master_key,
            POC1_DB_URL=self.db_url,
            UPSTREAM_API_BASE=f"http://127.0.0.1:{self.standin_port}/v1",
            UPSTREAM_API_KEY=self.upstream_key,
            POC1_LOGGER_SPOOL_DIR=str(self.spool_dir),
            POC1_LOGGER_METRICS_PORT=str(self.metrics_port),
            PYTHONPATH=str(app_dir(self.app_path)),  # only the app directory, as the unit sets it
            PYTHONUNBUFFERED="1",
        )
        env.update(self.env)
        return env

    def start_standin(self) -> None:
        self.standin = subprocess.Popen(
            [sys.executable, "-c", STANDIN_LAUNCHER, "--host", "127.0.0.1", "--port", str(self.standin_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_http(f"http://127.0.0.1:{self.standin_port}/health", self.standin, 15)

    def stop_standin(self) -> None:
        _stop(self.standin)
        self.standin = None

    def start(self, timeout: float = 90.0) -> "Gateway":
        """Stand-in, then the proxy (the first 200 of /health/liveliness)."""
        try:
            self.start_standin()
        except Exception as exc:
            self.stop()
            raise GatewayStartError(f"stand-in did not start: {exc}") from None
        return self.start_proxy(timeout)

    def start_proxy(self, timeout: float = 90.0) -> "Gateway":
        """The proxy alone (again after ``stop_proxy``: same ports, spool and database)."""
        litellm_cli = shutil.which("litellm")
        if litellm_cli is None:
            raise GatewayStartError("the litellm CLI is not on PATH (pip install 'litellm[proxy]')")
        try:
            with open(self.log_path, "ab") as log:
                self.proxy = subprocess.Popen(
                    [litellm_cli, "--config", str(self.config), "--host", "127.0.0.1",
                     "--port", str(self.port), "--num_workers", str(self.num_workers),
                     "--timeout_worker_healthcheck", "30"],  # as deploy/litellm-gateway.service, and why
                    cwd=ROOT, env=self.proxy_env(), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True)
            _wait_http(f"{self.url}/health/liveliness", self.proxy, timeout)
        except Exception as exc:
            tail = self.log_text().splitlines()[-5:]
            self.stop()
            raise GatewayStartError(f"gateway did not start: {exc}; log tail: {tail}") from None
        return self

    def _metrics_text(self) -> str:
        served = f"metrics on http://127.0.0.1:{self.metrics_port}/metrics"
        assert served in self.log_text(), f"this gateway's logger does not serve {served} (port taken?)"
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metrics(self) -> dict[str, float]:
        """The logger's unlabelled ``gateway_logger_*`` samples (name without prefix -> value), as check 8
        reads them: one scrape of 127.0.0.1:<metrics port>."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self._metrics_text()
        families = [f for f in text_string_to_metric_families(text) if f.name.startswith("gateway_logger_")]
        return {s.name.removeprefix("gateway_logger_"): s.value
                for f in families for s in f.samples if not s.labels}

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample of one metric (e.g. ``gateway_logger_build_info``)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self._metrics_text()
        return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == name]

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> str:
        """The first log line containing ``needle`` (waits for it)."""
        def first() -> str | None:
            return next((ln for ln in self.log_text().splitlines() if needle in ln), None)

        found, line = poll_until(first, timeout=timeout, interval=0.1)
        if found and line is not None:
            return line
        raise AssertionError(f"no gateway log line containing {needle!r} within {timeout}s")

    def chat(self, client: httpx.Client, content: str, *, model: str = MODEL, key: str | None = "master",
             **body: object) -> httpx.Response:
        headers = self.headers if key == "master" else ({"Authorization": f"Bearer {key}"} if key else {})
        payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        return client.post(f"{self.url}/v1/chat/completions", json=payload, headers=headers)

    def stop_proxy(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        code = _stop(self.proxy, sig, timeout)
        return code

    def stop(self) -> None:
        self.stop_proxy()
        self.stop_standin()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# reading back what the gateway logged, and callback input of LiteLLM's shape for writer-level tests


def logged_rows(db_url: str, request_ids: list[str]) -> dict[str, dict]:
    """request_id -> {request columns..., "responses": [response rows]} for the given ids."""
    from sqlalchemy import select

    import db_init

    engine = db_init.make_engine(db_url)
    try:
        with engine.connect() as conn:
            found: dict[str, dict] = {}
            for chunk in (request_ids[i:i + 1000] for i in range(0, len(request_ids), 1000)):
                query = select(db_init.Request.__table__).where(db_init.Request.request_id.in_(chunk))
                for req in conn.execute(query).mappings():
                    found[req["request_id"]] = dict(req, responses=[])
            if found:
                by_pk = {v["id"]: v for v in found.values()}
                query = select(db_init.Response.__table__).where(
                    db_init.Response.request_id_fk.in_(list(by_pk)))
                for resp in conn.execute(query).mappings():
                    by_pk[resp["request_id_fk"]]["responses"].append(dict(resp))
            return found
    finally:
        engine.dispose()


def wait_for_rows(db_url: str, request_ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll until every id has its request row and one response row (or the timeout passes)."""
    return poll_until(lambda: logged_rows(db_url, request_ids),
                      lambda rows: all(len(rows.get(i, {}).get("responses", [])) == 1 for i in request_ids),
                      timeout=timeout, interval=0.2)[1]


def rows_with_marker(db_url: str, marker: str, timeout: float = 5.0) -> list[dict]:
    """Rows whose payload mentions ``marker``: for answers without ``x-poc1-request-id`` (a request LiteLLM
    refuses before any hook runs, e.g. one without a key)."""
    from sqlalchemy import String, cast, select

    import db_init

    engine = db_init.make_engine(db_url)
    def ids() -> list[str]:
        with engine.connect() as conn:
            return list(conn.execute(select(db_init.Request.request_id).where(
                cast(db_init.Request.payload, String).contains(marker))).scalars().all())

    try:
        found = poll_until(ids, timeout=timeout, interval=0.1)[1]
        return list(wait_for_rows(db_url, found, timeout).values())
    finally:
        engine.dispose()


def request_ids_of_call(db_url: str, call_id: str) -> list[str]:
    """The request_id of every requests row logged under LiteLLM's call id ``call_id``, oldest first."""
    from sqlalchemy import select

    import db_init

    engine = db_init.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(db_init.Request.request_id).where(
                db_init.Request.call_id == call_id).order_by(db_init.Request.id)).scalars())
    finally:
        engine.dispose()


def litellm_call(call_id: str, content: str = "hello", *, failed: bool = False, status: int | None = None,
                 key_hash: str | None = "litellm_proxy_master_key", request_id: str | None = None) -> dict:
    """The callback kwargs LiteLLM passes (the fields the logger reads), as seen live in lab-notes.md.

    ``request_id``: the id the logger's pre-call hook gave the HTTP request (in the request's metadata);
    None = a call that failed before the hook ran (authentication)."""
    now = time.time()
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
            "metadata": {"headers": {"host": "127.0.0.1"}, "user_api_key_hash": key_hash},
            "litellm_call_id": call_id}
    slo = {
        "litellm_call_id": call_id, "model_group": MODEL, "model": f"openai/{MODEL}", "end_user": None,
        "startTime": now - 0.02, "endTime": now, "messages": body["messages"],
        "metadata": {"user_api_key_request_route": "/v1/chat/completions", "user_api_key_hash": key_hash,
                     "user_api_key_user_id": "default_user_id"},
        "prompt_tokens": 0 if failed else 2, "completion_tokens": 0 if failed else 9,
        "total_tokens": 0 if failed else 11, "response_cost": 0.0 if failed else 5.7e-06,
        "response": {} if failed else {"model": MODEL,
                                       "choices": [{"message": {"content": "hi " + content}}]},
        "error_str": "upstream failed" if failed else None,
        "error_information": {"error_code": str(status or ""), "error_class": "X" if failed else ""},
    }
    return {"standard_logging_object": slo, "litellm_call_id": call_id, "model": MODEL,
            "litellm_params": {"proxy_server_request": {"body": body}, "api_key": "sk-upstream-never-log",
                               "metadata": {"poc1_gateway_request_id": request_id} if request_id else {}},
            "exception": RuntimeError("upstream failed") if failed else None}
