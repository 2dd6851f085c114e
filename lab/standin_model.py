#!/usr/bin/env python3
"""A small OpenAI-compatible server that stands in for the LLM provider.

It is the only mock in the project: the gateway reaches it over real HTTP through ``api_base`` and
gets real OpenAI-shaped answers with usage tokens, so cost, tokens and latency flow as in production,
with no internet. Standard library only, so it runs with any python3 on a lab host.

    python3 standin_model.py --host 127.0.0.1 --port 8011

Endpoints: ``POST /v1/chat/completions`` (plain and ``"stream": true``, text or a call of the first
tool when ``tools`` are given, text and image content parts), ``POST /v1/completions`` (legacy text),
``POST /v1/embeddings`` (deterministic unit vectors, ``float`` or ``base64``), ``GET /v1/models`` and
``GET /health``. The ``model`` a request names is echoed back. Tokens are words: ``prompt_tokens`` is
the prompt's word count (min 1, each image counts ``IMAGE_TOKENS``), ``completion_tokens`` the answer's;
a stream sends one chunk per word, and its usage chunk (``stream_options.include_usage``) equals the
plain answer's usage.

``STANDIN_DELAY_MS`` (env) adds a fixed delay before each answer, to imitate a provider's latency;
``STANDIN_TOKEN_DELAY_MS`` (env) paces a stream: every chunk after the first waits this long.

Test-only markers, read from the prompt text (any message's text, the completion prompt or the
embedding input); a real client never sends them. Each is ``[standin:NAME=VALUE]``:

    [standin:status=NNN]         answer HTTP NNN (400-599) with an OpenAI-shaped error body; 429 adds
                                 ``retry-after: 1``
    [standin:sleep=S]            sleep S seconds (float) before answering, e.g. for upstream timeouts
    [standin:break-after=N]      stream: send N content chunks, then close the connection without the
                                 final chunk or ``[DONE]``; plain call: close without answering
    [standin:token-delay-ms=N]   pace this call's stream chunks (overrides STANDIN_TOKEN_DELAY_MS)
    [standin:tokens=N]           the answer is exactly N words (a long stream to abandon midway)
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import re
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHAT_MODEL = "gpt-4o-mini"
TEXT_MODEL = "gpt-3.5-turbo-instruct"
EMBEDDING_MODEL = "text-embedding-3-small"
IMAGE_TOKENS = 85  # what one low-detail image costs at OpenAI
EMBEDDING_DIMS = 8
MAX_DIMS = 4096
MARKER = re.compile(r"\[standin:([a-z-]+)=([^\]\s]+)\]")
PIECE = re.compile(r"^\s*\S+\s*|\S+\s*")  # one word with the spaces after it; lossless when joined


class BadRequest(ValueError):
    """A request OpenAI would refuse with 400 invalid_request_error."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Faults:
    """The test-only markers of one request (see the module docstring)."""

    status: int | None = None
    sleep: float = 0.0
    break_after: int | None = None
    token_delay: float = 0.0  # seconds
    tokens: int | None = None

    @classmethod
    def parse(cls, text: str) -> Faults:
        found: dict[str, object] = {"token_delay": _env_seconds("STANDIN_TOKEN_DELAY_MS")}
        for name, value in MARKER.findall(text):
            try:
                if name == "status" and 400 <= int(value) <= 599:
                    found["status"] = int(value)
                elif name == "sleep":
                    found["sleep"] = max(0.0, float(value))
                elif name == "break-after":
                    found["break_after"] = max(0, int(value))
                elif name == "token-delay-ms":
                    found["token_delay"] = max(0.0, float(value)) / 1000.0
                elif name == "tokens" and 1 <= int(value) <= 100_000:
                    found["tokens"] = int(value)
            except ValueError:  # a malformed marker is ignored, like any other prompt text
                pass
        return cls(**found)  # type: ignore[arg-type]


def _env_seconds(name: str) -> float:
    return float(os.environ.get(name) or 0) / 1000.0


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str) -> list[str]:
    return PIECE.findall(text)


def _content_text(content: object) -> tuple[str, int]:
    """(text, image count) of a message's content: a string, or a list of text/image parts."""
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return "", 0  # e.g. null content of an assistant message that called a tool
    texts = [str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"]
    images = sum(1 for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "input_image"))
    return " ".join(texts), images


def _answer(prompt: str, faults: Faults) -> str:
    if faults.tokens is not None:
        return " ".join(f"token{i}" for i in range(1, faults.tokens + 1))
    return f"Hello from the stand-in model. You said: {prompt[:200]}"


def _example(schema: object) -> object:
    """A deterministic value that fits a JSON schema: strings are "stand-in", numbers 1."""
    if not isinstance(schema, dict):
        return "stand-in"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        names = schema.get("required") if isinstance(schema.get("required"), list) else list(props)
        return {str(n): _example(props.get(n, {})) for n in names}
    if kind == "array":
        return [_example(schema.get("items", {}))]
    return {"integer": 1, "number": 1, "boolean": True, "null": None}.get(str(kind), "stand-in")


def _chosen_tool(req: dict) -> dict | None:
    """The function the answer calls: the named one of ``tool_choice``, else the first; None for text."""
    tools = [t.get("function") for t in req.get("tools") or [] if isinstance(t, dict)]
    tools = [t for t in tools if isinstance(t, dict) and t.get("name")]
    choice = req.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["name"] == wanted), tools[0])
    return tools[0]


@dataclass
class Choice:
    """One choice of an answer, as the words (or argument pieces) a stream sends one by one."""

    pieces: list[str]
    tool: dict | None = None  # {"id", "name"} when the choice calls a tool

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool else "stop"


@dataclass
class Turn:
    """One answer, shared by the plain and the streamed form so both report the same usage."""

    chat: bool  # chat.completion, else text_completion
    model: str
    prompt_tokens: int
    choices: list[Choice]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))

    def usage(self) -> dict:
        done = sum(len(c.pieces) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def _envelope(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        prefix = "chatcmpl-" if self.chat else "cmpl-"
        return {"id": prefix + self.id, "object": kind, "created": self.created, "model": self.model}

    def plain(self) -> dict:
        choices = []
        for index, c in enumerate(self.choices):
            text = "".join(c.pieces)
            if not self.chat:
                choices.append({"text": text, "index": index, "logprobs": None, "finish_reason": "stop"})
                continue
            message: dict = {"role": "assistant", "content": text, "refusal": None}
            if c.tool:
                message.update(content=None, tool_calls=[{
                    "id": c.tool["id"], "type": "function",
                    "function": {"name": c.tool["name"], "arguments": text}}])
            choices.append({"index": index, "message": message, "logprobs": None,
                            "finish_reason": c.finish_reason})
        return {**self._envelope(False), "choices": choices, "usage": self.usage()}

    def _chunk(self, index: int, delta: dict, finish: str | None = None) -> dict:
        if self.chat:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"text": delta.get("content", ""), "index": index, "logprobs": None,
                      "finish_reason": finish}
        return {**self._envelope(True), "choices": [choice]}

    def stream(self) -> tuple[list[dict], list[dict], list[dict]]:
        """(opening chunks, one chunk per piece, closing chunks) -- break-after cuts the middle."""
        head: list[dict] = []
        body: list[dict] = []
        tail: list[dict] = []
        for index, c in enumerate(self.choices):
            if self.chat and c.tool:
                call = {"index": 0, "id": c.tool["id"], "type": "function",
                        "function": {"name": c.tool["name"], "arguments": ""}}
                head.append(self._chunk(index, {"role": "assistant", "content": None, "tool_calls": [call]}))
                body += [self._chunk(index, {"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                         for p in c.pieces]
            else:
                if self.chat:
                    head.append(self._chunk(index, {"role": "assistant", "content": ""}))
                body += [self._chunk(index, {"content": p}) for p in c.pieces]
            tail.append(self._chunk(index, {}, c.finish_reason))
        return head, body, tail

    def usage_chunk(self) -> dict:
        return {**self._envelope(True), "choices": [], "usage": self.usage()}


def chat_turn(req: dict, faults: Faults) -> Turn:
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    parts = [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]
    prompt = " ".join(text for text, _ in parts)
    prompt_tokens = max(1, _words(prompt) + IMAGE_TOKENS * sum(images for _, images in parts))
    tool = _chosen_tool(req)
    if tool is None:
        choice = Choice(_pieces(_answer(prompt, faults)))
    else:
        arguments = json.dumps(_example(tool.get("parameters") or {"type": "object"}))
        choice = Choice(_pieces(arguments), {"id": "call_" + uuid.uuid4().hex[:24], "name": tool["name"]})
    return Turn(True, str(req.get("model") or CHAT_MODEL), prompt_tokens, [choice])


def _prompts(req: dict) -> list[str]:
    prompt = req.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return [" ".join(map(str, prompt))]  # token ids: one word each
    raise BadRequest("'prompt' must be a string, an array of strings or an array of token ids", "prompt")


def completion_turn(req: dict, faults: Faults) -> Turn:
    prompts = _prompts(req)
    choices = [Choice(_pieces(_answer(p, faults))) for p in prompts]
    prompt_tokens = max(1, sum(_words(p) for p in prompts))
    return Turn(False, str(req.get("model") or TEXT_MODEL), prompt_tokens, choices)


def _embedding_inputs(value: object) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, int) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and v and all(isinstance(i, int) for i in v) for v in value):
            return list(value)
    raise BadRequest("'input' must be a string, an array of strings or of token ids", "input")


def vector(item: str | list[int], dims: int) -> list[float]:
    """A unit vector from sha256 of the input; float32-exact, so float and base64 carry the same numbers."""
    key = (item if isinstance(item, str) else json.dumps(item)).encode()
    blocks = b"".join(hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range(dims // 8 + 1))
    raw = [n / 2**31 - 1.0 for n in struct.unpack(f">{dims}I", blocks[:dims * 4])]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in raw))))


def embeddings(req: dict) -> dict:
    inputs = _embedding_inputs(req.get("input"))
    dims = req.get("dimensions", EMBEDDING_DIMS)
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= MAX_DIMS:
        raise BadRequest(f"'dimensions' must be an integer from 1 to {MAX_DIMS}", "dimensions")
    encoding = req.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    data = []
    for index, item in enumerate(inputs):
        vec: list[float] | str = vector(item, dims)
        if encoding == "base64":
            vec = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vec})
    tokens = sum(max(1, _words(i)) if isinstance(i, str) else len(i) for i in inputs)
    return {"object": "list", "data": data, "model": str(req.get("model") or EMBEDDING_MODEL),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def marker_text(route: str, req: dict) -> str:
    """The text the test-only markers are read from."""
    if route == "chat":
        messages = req.get("messages") if isinstance(req.get("messages"), list) else []
        return " ".join(_content_text(m.get("content"))[0] for m in messages if isinstance(m, dict))
    value = req.get("prompt" if route == "text" else "input")
    return value if isinstance(value, str) else json.dumps(value)


def error_body(code: int, message: str, param: str | None = None) -> dict:
    """OpenAI's error shape for an HTTP status."""
    if code == 429:
        kind, err_code = "rate_limit_error", "rate_limit_exceeded"
    elif code >= 500:
        kind, err_code = "server_error", None
    else:
        kind, err_code = "invalid_request_error", None
    return {"error": {"message": message, "type": kind, "param": param, "code": err_code}}


def _model(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "standin"}


def _route(path: str) -> str | None:
    path = path.split("?", 1)[0].rstrip("/")
    for suffix, route in (("/chat/completions", "chat"), ("/completions", "text"), ("/embeddings", "embed")):
        if path.endswith(suffix):
            return route
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin-model/2"
    # headers and body go out in separate writes; without TCP_NODELAY each answer waits ~40 ms
    # for the client's delayed ACK, which inflates every latency the suite measures
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:  # keep the journal quiet
        pass

    def _send(self, code: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection as a failing provider does: what was sent stays sent, nothing follows."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/health", "/v1/models", "/models"):
            models = [_model(m) for m in (CHAT_MODEL, TEXT_MODEL, EMBEDDING_MODEL)]
            self._send(200, {"object": "list", "data": models})
        elif path.startswith(("/v1/models/", "/models/")):  # any id: the stand-in serves whatever is named
            self._send(200, _model(path.rsplit("/", 1)[1]))
        else:
            self._send(404, error_body(404, f"Unknown path {path}"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            req = None
        route = _route(self.path)
        if route is None:
            self._send(404, error_body(404, f"Unknown path {self.path}"))
            return
        if not isinstance(req, dict):
            self._send(400, error_body(400, "The body is not a JSON object"))
            return
        faults = Faults.parse(marker_text(route, req))
        time.sleep(_env_seconds("STANDIN_DELAY_MS") + faults.sleep)
        if faults.status:
            retry = {"retry-after": "1"} if faults.status == 429 else {}
            self._send(faults.status, error_body(faults.status, f"stand-in: status {faults.status}"), retry)
            return
        stream = route != "embed" and req.get("stream") is True
        if faults.break_after is not None and not stream:
            self._drop()
            return
        try:
            if route == "embed":
                self._send(200, embeddings(req))
                return
            turn = (chat_turn if route == "chat" else completion_turn)(req, faults)
        except BadRequest as exc:
            self._send(400, error_body(400, str(exc), exc.param))
            return
        if not stream:
            self._send(200, turn.plain())
            return
        options = req.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._stream(turn, include_usage, faults)

    def _stream(self, turn: Turn, include_usage: bool, faults: Faults) -> None:
        """Server-sent events in chunked framing, each chunk written (and so sent) as it is made."""
        head, body, tail = turn.stream()
        broken = faults.break_after is not None
        chunks = head + (body[:faults.break_after] if broken else body + tail)
        if include_usage:
            chunks = [{**c, "usage": None} for c in chunks] + ([] if broken else [turn.usage_chunk()])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for n, chunk in enumerate(chunks):
                if n and faults.token_delay:
                    time.sleep(faults.token_delay)
                self._write_event(json.dumps(chunk))
            if broken:
                self._drop()
                return
            self._write_event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client went away midway
            self.close_connection = True

    def _write_event(self, data: str) -> None:
        event = f"data: {data}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))


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
