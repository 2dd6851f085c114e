"""Is the gateway really serving? A real chat completion from the runner, as a user would send it."""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from lab import layout


def chat_completion(master_key: str, content: str = "lab readiness probe", timeout: float = 15,
                    url: str = layout.GATEWAY_URL) -> tuple[int, str]:
    """POST /v1/chat/completions to a gateway (the first by default); returns (HTTP status or 0, short
    reason)."""
    body = json.dumps({"model": layout.MODEL, "user": "poc1-lab",
                       "messages": [{"role": "user", "content": content}]}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {master_key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, "ok"
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code}"
    except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


def tcp_open(ip: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False
