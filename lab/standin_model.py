#!/usr/bin/env python3
"""A small OpenAI-compatible chat-completions server that stands in for the LLM provider.

It is the only mock in the project: the gateway reaches it over real HTTP through ``api_base`` and
gets a real OpenAI-shaped answer with usage tokens, so cost, tokens and latency flow as in
production, with no internet. Standard library only, so it runs with any python3 on a lab host.

    python3 standin_model.py --host 127.0.0.1 --port 8011

``STANDIN_DELAY_MS`` (env) adds a fixed delay per answer, to imitate a provider's latency.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin-model/1"
    # headers and body go out in separate writes; without TCP_NODELAY each answer waits ~40 ms
    # for the client's delayed ACK, which inflates every latency the suite measures
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:  # keep the journal quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") in ("/health", "/v1/models", "/models"):
            self._send(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._send(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found"}})
            return
        delay = float(os.environ.get("STANDIN_DELAY_MS", "0")) / 1000.0
        if delay:
            time.sleep(delay)
        messages = req.get("messages") or []
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        answer = f"Hello from the stand-in model. You said: {prompt[:200]}"
        pt, ct = _tokens(prompt), _tokens(answer)
        self._send(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.get("model", "gpt-4o-mini"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        })


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stand-in model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"standin-model listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
