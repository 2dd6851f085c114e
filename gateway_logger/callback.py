"""The LiteLLM callback, ``GatewayLogger``: captures each call on LiteLLM's event loop and hands it to the
writer thread; gives each HTTP request its id (pre-call hook) and tells the client (response header)."""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from gateway_logger.calls import REQUEST_ID_HEADER, REQUEST_ID_KEY, capture, issued_request_id, new_request_id
from gateway_logger.identity import LOADED_SHA256, build_info
from gateway_logger.journal import RateLimitedSay, say
from gateway_logger.metrics import Stats
from gateway_logger.metrics_port import enable_multiprocess, serve_metrics, worker_count
from gateway_logger.settings import Settings
from gateway_logger.shutdown import WRITERS, hook_shutdown, install_signal_flag
from gateway_logger.writer import Writer

try:
    from litellm.integrations.custom_logger import CustomLogger
except ImportError:  # the writer is usable (and testable) without LiteLLM
    CustomLogger = object  # type: ignore[misc,assignment]


#: set to 1 only for check 6's control listener (acceptance/overhead_control.py)
DISABLED_ENV = "POC1_LOGGER_DISABLED"


class GatewayLogger(CustomLogger):  # type: ignore[misc,valid-type]
    """Captures each call on LiteLLM's loop and hands it to the writer thread."""

    METRICS_RETRY_S = 5.0

    def __init__(self, settings: Settings | None = None, db_url: str | None = None, **kwargs: Any) -> None:
        if CustomLogger is not object:
            super().__init__(**kwargs)
        self.settings = settings or Settings.from_env()
        in_gateway = "litellm.proxy.proxy_server" in sys.modules
        #: off only for check 6's control listener: the same gateway build, writing no rows
        self.enabled = os.environ.get(DISABLED_ENV, "").strip() not in ("1", "true", "yes")
        self._multiprocess_dir = enable_multiprocess(self.settings) if in_gateway and self.enabled else None
        self.stats = Stats()
        self._db_url = db_url
        self._writer: Writer | None = None
        self._lock = threading.Lock()
        self._say_capture = RateLimitedSay()
        self._serving = False
        self._metrics_tried = -math.inf
        self._metrics_lock = threading.Lock()
        if not self.enabled:
            say(f"disabled ({DISABLED_ENV}=1): this gateway process writes no rows (a control listener for "
                "check 6, never the production gateway)")
        elif in_gateway:  # inside the gateway: connect (and say so) at start
            self.start()

    @property
    def writer(self) -> Writer:
        return self._writer or self.start()

    def start(self) -> Writer:
        with self._lock:
            if self._writer is None:
                n = worker_count()
                role = f"one of {n} workers (supervisor pid {os.getppid()})" if n > 1 else "the only worker"
                s = self.settings
                say(f"starting (pid {os.getpid()}, {role}; queue max {s.queue_max} rows / "
                    f"{s.queue_max_bytes} bytes, batch max {s.batch_max} rows / {s.batch_max_bytes} bytes, "
                    f"documents cut past {s.document_max_bytes} bytes, spool {s.spool_dir} max "
                    f"{s.spool_max_rows} rows)")
                info = build_info()
                files = " ".join(f"{name}={digest}" for name, digest in LOADED_SHA256.items())
                say(f"build: {files} " + " ".join(f"{k}={v}" for k, v in info.items()))
                self.stats.build_info.labels(**info).set(1)
                self.stats.set_gauge("workers", 1)
                self._writer = Writer(self.settings, self.stats, self._db_url)
                self._writer.on_tick.append(self._keep_metrics_served)
                self._writer.start()
                WRITERS.append(self._writer)
                if "litellm.proxy.proxy_server" in sys.modules:
                    install_signal_flag()
                    hook_shutdown()
                self._keep_metrics_served()
            return self._writer

    def _keep_metrics_served(self) -> None:
        """Serve the metrics port, or try again later: with several workers, the one holding it may die."""
        with self._metrics_lock:
            if self._serving or not self.settings.metrics_port:
                return
            if time.monotonic() - self._metrics_tried < self.METRICS_RETRY_S:
                return
            quiet = self._metrics_tried > -math.inf
            self._metrics_tried = time.monotonic()
            self._serving = serve_metrics(self.stats, int(self.settings.metrics_port), self.settings,
                                          self._multiprocess_dir, quiet=quiet)

    def _submit(self, kwargs: Mapping[str, Any], failed: bool) -> None:
        try:
            self.writer.submit(capture(kwargs, failed))
        except Exception as exc:  # the gateway must never fail because of its logger
            self.stats.add("rows_dropped")
            self._say_capture(f"a call could not be captured and was dropped: {type(exc).__name__}: {exc}")

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, False)

    async def async_log_failure_event(self, kwargs: Any, response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        if self.enabled:
            self._submit(kwargs, True)

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict,
                                  call_type: Any) -> dict:
        """Gives the HTTP request its own id before LiteLLM calls the model: LiteLLM keeps this
        metadata through its retries and hands it to every callback of the request, so retried
        attempts stay one row and two requests never share one (whatever call id the client sent)."""
        if self.enabled:
            metadata = data.get("metadata")
            if not isinstance(metadata, dict):
                metadata = data["metadata"] = {}
            metadata[REQUEST_ID_KEY] = new_request_id()
        return data

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: Any, response: Any,
                                                    request_headers: Any = None,
                                                    litellm_call_info: Any = None) -> dict[str, str] | None:
        """Tells the client its row: ``x-poc1-request-id`` (also on errors LiteLLM answers itself)."""
        metadata = data.get("metadata") or {}
        request_id = issued_request_id(metadata.get(REQUEST_ID_KEY)) if self.enabled else None
        return {REQUEST_ID_HEADER: request_id} if request_id else None
