"""Every call kind the gateway serves, through the real ``litellm`` proxy into the real PostgreSQL.

Chat (plain, streamed with and without usage, tool calls, image parts), legacy completions, embeddings,
each failure the gateway answers, a stream the client leaves and one the provider breaks: every HTTP
request must end as exactly one ``requests`` row with its own status and route, and one linked
``responses`` row holding what the client got. The client is the official ``openai`` SDK; the provider is
the stand-in (lab/standin_model.py), steered by its test-only prompt markers. One gateway for the module
(~8 s to start), on a config copy that adds a rate-limited and a short-timeout model group.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

import db_init
from tests.support.gateway import (MODEL, Gateway, config_copy, request_ids_of_call, rows_with_marker,
                                   wait_for_rows)
from tests.support.pgserver import PgServer

TEXT_MODEL, EMBEDDING_MODEL = "gpt-3.5-turbo-instruct", "text-embedding-3-small"
RATE_LIMITED, SHORT_TIMEOUT = "gpt-4o-mini-rpm1", "gpt-4o-mini-timeout"
CHAT, COMPLETIONS, EMBEDDINGS = "/v1/chat/completions", "/v1/completions", "/v1/embeddings"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
#: a 1x1 PNG
IMAGE = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAW"
         "jR9awAAAABJRU5ErkJggg==")
#: clock granularity between the client's and the gateway's measurement of the same instant
TTFT_TOLERANCE_MS = 5.0


@pytest.fixture(scope="module")
def log_db(pg: PgServer) -> str:
    url = pg.create_database(f"kinds_{uuid.uuid4().hex[:8]}")
    db_init.create(url)
    return url


@pytest.fixture(scope="module")
def gateway(log_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = config_copy(
        tmp_path_factory.mktemp("config"),
        {RATE_LIMITED: {"rpm": 1}, SHORT_TIMEOUT: {"timeout": 0.5}},
        # usage-based routing enforces a deployment's rpm (429). Without a retry policy the router would
        # retry a rate-limited call after its retry-after (60 s) and a timed-out one twice.
        {"routing_strategy": "usage-based-routing-v2",
         "model_group_retry_policy": {RATE_LIMITED: {"RateLimitErrorRetries": 0},
                                      SHORT_TIMEOUT: {"TimeoutErrorRetries": 0}}})
    gw = Gateway(log_db, config=config).start()
    try:
        yield gw
    finally:
        gw.cleanup()


@pytest.fixture(scope="module")
def sent() -> list[str]:
    """The path of every HTTP request this module's client sent (the last test counts their rows)."""
    return []


@pytest.fixture(scope="module")
def shared_call_ids() -> dict[str, int]:
    """Client call ids the module deliberately sent more than once, and how many times."""
    return {}


@pytest.fixture(scope="module")
def client(gateway: Gateway, sent: list[str]) -> Iterator[openai.OpenAI]:
    http = openai.DefaultHttpxClient(event_hooks={"request": [lambda request: sent.append(request.url.path)]})
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.master_key, max_retries=0, timeout=30,
                        http_client=http)
    try:
        yield sdk
    finally:
        sdk.close()


# --------------------------------------------------------------------------------------------------
# helpers


def _say(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{text} {uuid.uuid4().hex[:8]}"}]


def logged(log_db: str, headers: Any, *, status: int, route: str, rows_of_call: int = 1) -> dict:
    """The call's one requests row (found by ``x-poc1-request-id``) with its one response row; checks the
    status and route, and that ``rows_of_call`` rows carry its call id so far."""
    request_id = headers["x-poc1-request-id"]
    row = wait_for_rows(log_db, [request_id], timeout=10.0).get(request_id)
    assert row is not None, f"no requests row for {request_id}"
    assert len(row["responses"]) == 1
    assert (row["status_code"], row["route"]) == (status, route)
    assert row["call_id"] == headers["x-litellm-call-id"]
    assert len(request_ids_of_call(log_db, row["call_id"])) == rows_of_call
    return row


def _content(row: dict) -> dict:
    return row["responses"][0]["content"]


def _notes(row: dict) -> dict:
    return _content(row).get("gateway_logger", {})


def _tokens(row: dict) -> tuple[int, int, int]:
    resp = row["responses"][0]
    return resp["prompt_tokens"], resp["completion_tokens"], resp["total_tokens"]


def _usage(usage: Any) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.total_tokens


def _logged_text(row: dict) -> str:
    """The answer text of a logged response (a chat message, or a completion's text)."""
    choice = _content(row)["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def _streamed_chat(client: openai.OpenAI, messages: list[dict], **params: Any) -> tuple[Any, list[Any]]:
    """(response headers, chunks) of a chat stream read to its end."""
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=messages, stream=True, **params) as response:
        return response.headers, list(response.parse())


def _text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _refused(create: Callable[[], object]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        create()
    return caught.value


def _float32_sha256(vector: list[float] | str) -> str:
    """How the log fingerprints an embedding: sha256 of its little-endian float32 bytes."""
    raw = base64.b64decode(vector) if isinstance(vector, str) else struct.pack(f"<{len(vector)}f", *vector)
    return hashlib.sha256(raw).hexdigest()


# --------------------------------------------------------------------------------------------------
# chat


def test_chat_plain(client: openai.OpenAI, log_db: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=_say("plain chat"))
    answer = raw.parse()
    row = logged(log_db, raw.headers, status=200, route=CHAT)
    assert _tokens(row) == _usage(answer.usage) and answer.usage.total_tokens > 0
    assert _logged_text(row) == answer.choices[0].message.content
    assert "gateway_logger" not in _content(row)  # not a stream, one attempt: nothing to note


def test_chat_stream_without_stream_options(client: openai.OpenAI, log_db: str) -> None:
    """The client asks for no usage and gets none; LiteLLM asks the provider anyway, so the row has the
    provider's figures (those of the plain answer to the same prompt, not a tokenizer's estimate)."""
    messages = _say("streamed without stream options")
    headers, chunks = _streamed_chat(client, messages)
    assert all(c.usage is None for c in chunks)
    plain = client.chat.completions.create(model=MODEL, messages=messages)
    assert plain.choices[0].message.content == _text_of(chunks)  # the stand-in answers both alike
    row = logged(log_db, headers, status=200, route=CHAT)
    assert _logged_text(row) == _text_of(chunks)
    assert _tokens(row) == _usage(plain.usage) and min(_tokens(row)) > 0
    assert _notes(row)["stream"] is True and _notes(row)["usage_source"] == "provider"
    assert row["payload"]["stream"] is True
    assert "stream_options" not in row["payload"], "the log says the client asked for usage it never got"
    assert not any(key.startswith("_litellm") for key in row["payload"])


def test_chat_stream_with_include_usage(client: openai.OpenAI, log_db: str) -> None:
    headers, chunks = _streamed_chat(client, _say("streamed with usage"),
                                     stream_options={"include_usage": True})
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens > 0
    row = logged(log_db, headers, status=200, route=CHAT)
    assert _tokens(row) == _usage(usage)
    assert _logged_text(row) == _text_of(chunks)
    assert _notes(row)["usage_source"] == "provider"
    assert row["payload"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_tool_call(client: openai.OpenAI, log_db: str, stream: bool) -> None:
    messages = _say("what is the weather in Paris?")
    if stream:
        headers, chunks = _streamed_chat(client, messages, tools=TOOLS)
        calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
        name = calls[0].function.name
        arguments = "".join(call.function.arguments or "" for call in calls)
    else:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages, tools=TOOLS)
        headers, call = raw.headers, raw.parse().choices[0].message.tool_calls[0]
        name, arguments = call.function.name, call.function.arguments
    assert name == "get_weather" and arguments
    row = logged(log_db, headers, status=200, route=CHAT)
    logged_call = _content(row)["choices"][0]["message"]["tool_calls"]
    assert [c["function"] for c in logged_call] == [{"name": name, "arguments": arguments}]
    assert _content(row)["choices"][0]["finish_reason"] == "tool_calls"
    assert row["payload"]["tools"] == TOOLS
    assert min(_tokens(row)) > 0


def test_image_content_parts(client: openai.OpenAI, log_db: str) -> None:
    parts = [{"type": "text", "text": f"what is in this image? {uuid.uuid4().hex[:8]}"},
             {"type": "image_url", "image_url": {"url": IMAGE}}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": parts}])
    answer = raw.parse()
    row = logged(log_db, raw.headers, status=200, route=CHAT)
    assert row["payload"]["messages"][0]["content"] == parts  # the image as sent, data: URL and all
    assert _tokens(row) == _usage(answer.usage) and answer.usage.prompt_tokens > 85  # the image counted
    assert _logged_text(row) == answer.choices[0].message.content


# --------------------------------------------------------------------------------------------------
# legacy completions and embeddings


def test_completion_plain(client: openai.OpenAI, log_db: str) -> None:
    raw = client.completions.with_raw_response.create(model=TEXT_MODEL,
                                                      prompt=f"say hi {uuid.uuid4().hex[:8]}")
    answer = raw.parse()
    row = logged(log_db, raw.headers, status=200, route=COMPLETIONS)
    assert _tokens(row) == _usage(answer.usage) and answer.usage.total_tokens > 0
    assert _logged_text(row) == answer.choices[0].text


def test_completion_streamed(client: openai.OpenAI, log_db: str) -> None:
    """LiteLLM asks the provider for no usage on a text-completion stream and reports zero tokens: the
    logger counts them (``usage_source: counted``) and prices them."""
    with client.completions.with_streaming_response.create(
            model=TEXT_MODEL, prompt=f"say hi streamed {uuid.uuid4().hex[:8]}", stream=True) as response:
        headers, chunks = response.headers, list(response.parse())
    text = "".join(c.choices[0].text or "" for c in chunks if c.choices)
    assert text
    row = logged(log_db, headers, status=200, route=COMPLETIONS)
    assert _logged_text(row) == text
    prompt_tokens, completion_tokens, total_tokens = _tokens(row)
    assert prompt_tokens > 0 and completion_tokens > 0 and total_tokens == prompt_tokens + completion_tokens
    assert float(row["responses"][0]["cost"]) > 0
    assert _notes(row)["usage_source"] == "counted"


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(client: openai.OpenAI, log_db: str, encoding: str) -> None:
    """The content keeps each vector's dimensions and fingerprint, not the vector (see
    gateway_logger.summarize_embeddings): the same fingerprint whichever encoding the client chose."""
    inputs = [f"first input {uuid.uuid4().hex[:8]}", "second"]
    raw = client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL, input=inputs,
                                                      encoding_format=encoding)  # type: ignore[arg-type]
    wire = raw.http_response.json()  # what the client got, before the SDK decodes base64
    row = logged(log_db, raw.headers, status=200, route=EMBEDDINGS)
    prompt_tokens, _, total_tokens = _tokens(row)
    assert (prompt_tokens, total_tokens) == (wire["usage"]["prompt_tokens"], wire["usage"]["total_tokens"])
    assert prompt_tokens > 0
    assert isinstance(wire["data"][0]["embedding"], str if encoding == "base64" else list)
    assert _content(row)["data"] == [
        {"index": item["index"], "object": "embedding", "dimensions": 8,
         "float32_sha256": _float32_sha256(item["embedding"])} for item in wire["data"]]
    assert row["payload"]["input"] == inputs


# --------------------------------------------------------------------------------------------------
# failures


def test_no_key_401(client: openai.OpenAI, log_db: str) -> None:
    """LiteLLM refuses it before any hook runs, so the answer names no row: found by its text."""
    marker = f"no key {uuid.uuid4().hex}"
    error = _refused(lambda: client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": marker}],
        extra_headers={"Authorization": openai.omit}))
    assert error.status_code == 401
    rows = rows_with_marker(log_db, marker)
    assert [r["status_code"] for r in rows] == [401]
    assert rows[0]["route"] == CHAT and len(rows[0]["responses"]) == 1
    assert "No api key" in rows[0]["responses"][0]["content"]["error"]["message"]


def test_unknown_model_400(client: openai.OpenAI, log_db: str) -> None:
    error = _refused(lambda: client.chat.completions.create(model="no-such-model", messages=_say("x")))
    assert error.status_code == 400
    row = logged(log_db, error.response.headers, status=400, route=CHAT)
    assert row["model"] == "no-such-model"
    assert _content(row)["error"]["code"] == "400"


def test_upstream_503(client: openai.OpenAI, log_db: str) -> None:
    """The router retries it (config.yaml keeps LiteLLM's default retries) and answers 503: one row."""
    error = _refused(lambda: client.chat.completions.create(
        model=MODEL, messages=_say("[standin:status=503] unavailable")))
    assert error.status_code == 503
    row = logged(log_db, error.response.headers, status=503, route=CHAT)
    assert _content(row)["error"]["code"] == "503"
    assert _tokens(row) == (0, 0, 0)


def test_upstream_timeout(client: openai.OpenAI, log_db: str) -> None:
    """A provider slower than the deployment's timeout (0.5 s): LiteLLM answers 408."""
    error = _refused(lambda: client.chat.completions.create(
        model=SHORT_TIMEOUT, messages=_say("[standin:sleep=2] slow")))
    assert error.status_code == 408
    row = logged(log_db, error.response.headers, status=408, route=CHAT)
    assert _content(row)["error"]["class"] == "Timeout"


def test_rate_limited_deployment_429(client: openai.OpenAI, log_db: str) -> None:
    """The gateway's own limit (the deployment's rpm: 1), not the provider's: the first call in a minute
    passes, the next is refused. Three calls, in case the first two straddle a minute."""
    answers = []
    for n in range(3):
        try:
            raw = client.chat.completions.with_raw_response.create(model=RATE_LIMITED,
                                                                   messages=_say(f"rpm {n}"))
            answers.append((200, raw.headers))
        except openai.RateLimitError as error:
            answers.append((error.status_code, error.response.headers))
            break
    assert [status for status, _ in answers][-1] == 429 and answers[0][0] == 200
    rows = [logged(log_db, headers, status=status, route=CHAT) for status, headers in answers]
    assert {row["model"] for row in rows} == {RATE_LIMITED}
    error = _content(rows[-1])["error"]
    assert error["class"] == "RateLimitError" and "rpm" in error["message"]  # the gateway's limit


# --------------------------------------------------------------------------------------------------
# streams cut short


def test_stream_the_client_abandons_is_499_with_what_was_sent(client: openai.OpenAI, log_db: str) -> None:
    full = " ".join(f"token{i}" for i in range(1, 401))
    received = ""
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=_say("[standin:tokens=400] [standin:token-delay-ms=10] leave"),
            stream=True) as response:
        headers = response.headers
        for n, chunk in enumerate(response.parse()):
            received += _text_of([chunk])
            if n >= 5:
                break  # leaving the block closes the connection midway
    row = logged(log_db, headers, status=499, route=CHAT)
    text = _logged_text(row)
    assert received and text.startswith(received), "the log lost what the client got"
    assert full.startswith(text) and len(text) < len(full), "the log holds more than was sent"
    assert _notes(row)["client_disconnected"] is True and _notes(row)["usage_source"] == "counted"
    assert _tokens(row)[1] > 0


def test_stream_the_provider_breaks_is_one_failure_row(client: openai.OpenAI, log_db: str) -> None:
    """Paced (20 ms a chunk): unpaced, the break can overtake the first chunks inside the gateway (2 in
    60 calls), and the client then gets the error before any content."""
    received = ""
    with pytest.raises(openai.APIError):
        with client.chat.completions.with_streaming_response.create(
                model=MODEL, messages=_say("[standin:break-after=3] [standin:token-delay-ms=20] break"),
                stream=True) as response:
            headers = response.headers
            for chunk in response.parse():
                received += _text_of([chunk])
    row = logged(log_db, headers, status=500, route=CHAT)
    assert received  # it did break midway, after some content
    assert _content(row)["error"]["class"] == "APIConnectionError"
    assert _notes(row)["stream"] is True


# --------------------------------------------------------------------------------------------------
# one row per call, whatever call id the client sends


def _chat_with_call_id(client: openai.OpenAI, call_id: str, model: str = MODEL) -> tuple[int, Any]:
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=_say("call id"), extra_headers={"x-litellm-call-id": call_id})
        return 200, raw.headers
    except openai.APIStatusError as error:
        return error.status_code, error.response.headers


def test_same_client_call_id_twice_is_two_rows(client: openai.OpenAI, log_db: str,
                                               shared_call_ids: dict[str, int]) -> None:
    call_id = f"same-{uuid.uuid4()}"
    shared_call_ids[call_id] = 2
    rows = [logged(log_db, _chat_with_call_id(client, call_id)[1], status=200, route=CHAT, rows_of_call=n)
            for n in (1, 2)]
    assert {r["call_id"] for r in rows} == {call_id} and rows[0]["request_id"] != rows[1]["request_id"]


def test_call_ids_sharing_their_first_128_characters_are_two_rows(client: openai.OpenAI, log_db: str) -> None:
    head = f"long-{uuid.uuid4()}-".ljust(128, "x")
    for tail in ("a" * 100, "b" * 100):
        status, headers = _chat_with_call_id(client, head + tail)
        assert headers["x-litellm-call-id"] == head + tail  # LiteLLM kept the client's id
        assert logged(log_db, headers, status=status, route=CHAT)["call_id"] == head + tail


def test_failed_then_successful_call_with_one_call_id_is_two_rows(client: openai.OpenAI, log_db: str,
                                                                  shared_call_ids: dict[str, int]) -> None:
    call_id = f"retry-by-client-{uuid.uuid4()}"
    shared_call_ids[call_id] = 2
    status, headers = _chat_with_call_id(client, call_id, model="no-such-model")
    assert status == 400
    failed = logged(log_db, headers, status=400, route=CHAT)
    status, headers = _chat_with_call_id(client, call_id)
    assert status == 200
    succeeded = logged(log_db, headers, status=200, route=CHAT, rows_of_call=2)
    assert request_ids_of_call(log_db, call_id) == [failed["request_id"], succeeded["request_id"]]
    assert wait_for_rows(log_db, [failed["request_id"]], 5.0)[failed["request_id"]]["status_code"] == 400


def test_no_log_in_the_body_is_still_one_row(client: openai.OpenAI, log_db: str) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=_say("no-log"),
                                                           extra_body={"no-log": True})
    assert raw.http_response.status_code == 200
    logged(log_db, raw.headers, status=200, route=CHAT)


# --------------------------------------------------------------------------------------------------
# time to first token


def test_time_to_first_token_is_within_what_the_client_saw(client: openai.OpenAI, log_db: str,
                                                           record_property: Callable[[str, object], None]
                                                           ) -> None:
    """A paced stream (0.2 s before the first chunk, 30 ms between chunks): the logged time to first token
    is positive, no later than the client's first content chunk and no longer than the whole call.
    The pair is reported as a fact (user property ``ttft_ms``), not held to a figure."""
    messages = _say("[standin:sleep=0.2] [standin:token-delay-ms=30] [standin:tokens=20] paced")
    first_ms: float | None = None
    started = time.perf_counter()
    with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=messages, stream=True) as response:
        headers = response.headers
        for chunk in response.parse():
            if first_ms is None and _text_of([chunk]):
                first_ms = (time.perf_counter() - started) * 1000
    row = logged(log_db, headers, status=200, route=CHAT)
    logged_ms, latency_ms = _notes(row)["time_to_first_token_ms"], row["responses"][0]["latency_ms"]
    assert first_ms is not None
    record_property("ttft_ms", {"logged": logged_ms, "client": round(first_ms, 1), "latency": latency_ms})
    print(f"time to first token: logged {logged_ms} ms, client {first_ms:.1f} ms, latency {latency_ms} ms")
    assert 0 < logged_ms <= first_ms + TTFT_TOLERANCE_MS
    assert logged_ms <= latency_ms


# --------------------------------------------------------------------------------------------------
# last: the module's whole traffic, counted


def test_every_request_sent_is_one_row_with_one_response(log_db: str, sent: list[str],
                                                         shared_call_ids: dict[str, int]) -> None:
    """Every HTTP request this module's client sent is one requests row with one response row, and no
    call id has more rows than the client deliberately sent under it (a second event of one request
    under a fresh id would show here)."""
    if not sent:
        pytest.skip("no call was made in this run")
    engine = db_init.make_engine(log_db)
    try:
        deadline = time.monotonic() + 10
        while True:
            with engine.connect() as conn:
                count = conn.execute(select(func.count()).select_from(db_init.Request)).scalar_one()
            if count >= len(sent) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # a late second event of some request would land now
        with engine.connect() as conn:
            rows = conn.execute(
                select(db_init.Request.call_id, func.count(db_init.Response.id))
                .outerjoin(db_init.Response).group_by(db_init.Request.id)).all()
    finally:
        engine.dispose()
    assert len(rows) == len(sent), Counter(sent)
    assert all(responses == 1 for _, responses in rows)
    repeated = {call_id: n for call_id, n in Counter(call_id for call_id, _ in rows).items() if n > 1}
    assert repeated == shared_call_ids
