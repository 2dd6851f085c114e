"""The stand-in provider (lab/standin_model.py) as OpenAI's clients see it.

It is the project's only mock, so it has to look like OpenAI to the official ``openai`` SDK (which
LiteLLM's openai provider uses): these tests drive it with that SDK, and with plain httpx where the
wire framing itself is the point. It runs as a child process with ``python -I -S`` -- no site
packages -- because lab hosts run it with a bare python3.
"""
from __future__ import annotations

import base64
import itertools
import json
import math
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.pgserver import free_port

STANDIN = Path(__file__).resolve().parents[1] / "lab" / "standin_model.py"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "required": ["city", "days"],
                   "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                  "unit": {"type": "string", "enum": ["c", "f"]}}}}}
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQAB"


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The stand-in on a free loopback port, without the pacing variables of the caller's environment."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STANDIN_")}
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(STANDIN), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, f"stand-in exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "stand-in did not answer /health within 15 s"
                time.sleep(0.1)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=10) as sdk:
        yield sdk


def say(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def sse_events(base_url: str, path: str, body: dict) -> tuple[httpx.Response, list[str]]:
    """The raw ``data:`` payloads of one streamed call, and the response (for its headers)."""
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=10) as resp:
        lines = list(resp.iter_lines())
    assert all(line.startswith("data: ") or line == "" for line in lines), lines
    return resp, [line.removeprefix("data: ") for line in lines if line]


# --- chat ------------------------------------------------------------------------------------------


def test_plain_chat_echoes_the_model_and_counts_words(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="any-model", messages=say("hello there"))
    assert answer.object == "chat.completion" and answer.model == "any-model"
    assert answer.choices[0].message.content == "Hello from the stand-in model. You said: hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (2, 9, 11)


def test_stream_assembles_to_the_plain_answer(client: OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=say("stream me please"))
    chunks = list(client.chat.completions.create(model="m", messages=say("stream me please"), stream=True))
    assert {(c.id, c.created, c.model, c.object) for c in chunks} == {
        (chunks[0].id, chunks[0].created, "m", "chat.completion.chunk")}
    first, words, last = chunks[0].choices[0], chunks[1:-1], chunks[-1].choices[0]
    assert (first.delta.role, first.delta.content) == ("assistant", "")
    assert "".join(c.choices[0].delta.content for c in words) == plain.choices[0].message.content
    assert len(words) == plain.usage.completion_tokens  # one chunk per word
    assert last.finish_reason == "stop" and last.delta.content is None and last.delta.role is None
    assert all(c.usage is None and c.choices for c in chunks)  # no usage chunk unless asked for


def test_include_usage_adds_one_usage_chunk_equal_to_plain_usage(client: OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=say("count my tokens"))
    chunks = list(client.chat.completions.create(model="m", messages=say("count my tokens"), stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_sse_framing_on_the_wire(base_url: str) -> None:
    body = {"model": "m", "messages": say("frame [standin:tokens=3]"), "stream": True}
    resp, events = sse_events(base_url, "/chat/completions", body)
    assert resp.headers["content-type"] == "text/event-stream"
    assert resp.headers["transfer-encoding"] == "chunked"
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "token1 ", "token2 ", "token3", None]
    assert all("usage" not in c for c in chunks)  # the key is absent, as at OpenAI, without include_usage
    _, events = sse_events(base_url, "/chat/completions", {**body, "stream_options": {"include_usage": True}})
    chunks = [json.loads(e) for e in events[:-1]]
    assert [c["usage"] for c in chunks[:-1]] == [None] * 5  # "usage": null in every other chunk
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


def test_image_content_parts_count_text_and_images(client: OpenAI) -> None:
    parts = [{"type": "text", "text": "what is"}, {"type": "image_url", "image_url": {"url": PIXEL}},
             {"type": "text", "text": "this picture"}]
    answer = client.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert answer.choices[0].message.content == "Hello from the stand-in model. You said: what is this picture"
    assert answer.usage.prompt_tokens == 4 + 85


# --- tool calls ------------------------------------------------------------------------------------


def test_tool_call_plain(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=say("weather in Paris?"), tools=[WEATHER_TOOL])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "stand-in", "days": 1}


def test_tool_call_streamed_assembles_to_the_plain_arguments(client: OpenAI) -> None:
    plain = client.chat.completions.create(model="m", messages=say("weather?"), tools=[WEATHER_TOOL])
    with client.chat.completions.stream(model="m", messages=say("weather?"), tools=[WEATHER_TOOL]) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion()
    opening = chunks[0].choices[0].delta.tool_calls[0]
    assert (opening.index, opening.type, opening.function.name, opening.function.arguments) == (
        0, "function", "get_weather", "")
    assert opening.id.startswith("call_")
    pieces = [c.choices[0].delta.tool_calls[0] for c in chunks[1:-1]]
    assert len(pieces) > 1 and all(p.index == 0 and p.id is None for p in pieces)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (call,) = final.choices[0].message.tool_calls  # assembled by the SDK
    assert call.id == opening.id and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(plain.choices[0].message.tool_calls[0].function.arguments)


def test_tool_choice_none_answers_text(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=say("just talk"), tools=[WEATHER_TOOL],
                                            tool_choice="none")
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content.endswith("just talk")


# --- legacy completions ----------------------------------------------------------------------------


def test_completions_plain_and_streamed(client: OpenAI) -> None:
    plain = client.completions.create(model="instruct", prompt="once upon a time")
    assert plain.object == "text_completion" and plain.model == "instruct"
    (choice,) = plain.choices
    assert (choice.index, choice.logprobs, choice.finish_reason) == (0, None, "stop")
    assert choice.text == "Hello from the stand-in model. You said: once upon a time"
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (4, 11)
    chunks = list(client.completions.create(model="instruct", prompt="once upon a time", stream=True,
                                            stream_options={"include_usage": True}))
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks[:-1]) == choice.text
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_completions_list_of_prompts_gives_one_choice_each(client: OpenAI) -> None:
    answer = client.completions.create(model="instruct", prompt=["one", "two words"])
    assert [(c.index, c.text.rsplit(": ", 1)[1]) for c in answer.choices] == [(0, "one"), (1, "two words")]
    assert answer.usage.prompt_tokens == 3


def test_completions_stream_ends_with_done(base_url: str) -> None:
    _, events = sse_events(base_url, "/completions", {"model": "i", "prompt": "hi", "stream": True})
    assert events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in events[:-1])


# --- embeddings ------------------------------------------------------------------------------------


def test_embeddings_are_deterministic_unit_vectors(client: OpenAI) -> None:
    first = client.embeddings.create(model="embed", input=["alpha", "beta"], encoding_format="float")
    again = client.embeddings.create(model="embed", input=["alpha", "beta"], encoding_format="float")
    assert first.object == "list" and first.model == "embed"
    assert [(d.object, d.index) for d in first.data] == [("embedding", 0), ("embedding", 1)]
    vectors = [d.embedding for d in first.data]
    assert vectors == [d.embedding for d in again.data] and vectors[0] != vectors[1]
    assert all(len(v) == 8 and math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5) for v in vectors)
    assert (first.usage.prompt_tokens, first.usage.total_tokens) == (2, 2)


def test_embeddings_base64_is_little_endian_float32(client: OpenAI) -> None:
    floats = client.embeddings.create(model="e", input="alpha", encoding_format="float").data[0].embedding
    raw = client.embeddings.create(model="e", input="alpha", encoding_format="base64").data[0].embedding
    assert isinstance(raw, str)
    assert list(struct.unpack("<8f", base64.b64decode(raw))) == floats
    # with no encoding_format the SDK asks for base64 and decodes it itself
    assert client.embeddings.create(model="e", input="alpha").data[0].embedding == floats


def test_embeddings_dimensions_and_token_ids(client: OpenAI) -> None:
    wide = client.embeddings.create(model="e", input="alpha", dimensions=32, encoding_format="float")
    assert len(wide.data[0].embedding) == 32
    assert math.isclose(math.fsum(x * x for x in wide.data[0].embedding), 1.0, rel_tol=1e-5)
    ids = client.embeddings.create(model="e", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(ids.data) == 2 and ids.usage.prompt_tokens == 5


def test_bad_dimensions_is_an_invalid_request(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="e", input="alpha", dimensions=0)
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["param"] == "dimensions"


# --- fault triggers --------------------------------------------------------------------------------


def test_status_429_is_a_rate_limit_error_with_retry_after(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="m", messages=say("hi [standin:status=429]"))
    assert err.value.response.headers["retry-after"] == "1"
    assert err.value.body == {"message": "stand-in: status 429", "type": "rate_limit_error", "param": None,
                              "code": "rate_limit_exceeded"}


def test_status_503_is_a_server_error_also_for_streams_and_completions(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model="m", messages=say("[standin:status=503]"), stream=True)
    assert err.value.status_code == 503 and err.value.body["type"] == "server_error"
    with pytest.raises(openai.InternalServerError):
        client.completions.create(model="i", prompt="[standin:status=500]")


def test_sleep_exceeds_a_short_client_timeout(client: OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(model="m", messages=say("[standin:sleep=2]"))
    assert time.monotonic() - started < 1.5


def test_break_after_cuts_a_stream_without_done(client: OpenAI, base_url: str) -> None:
    stream = client.chat.completions.create(model="m", messages=say("[standin:break-after=2] go"), stream=True)
    received = [next(stream) for _ in range(3)]
    # the role chunk, then exactly two content chunks; then the SDK raises its connection error, caused by
    # the transport's framing error: the chunked body ended without its last chunk
    assert [c.choices[0].delta.content for c in received] == ["", "Hello ", "from "]
    with pytest.raises(openai.APIConnectionError) as err:
        next(stream)
    assert "incomplete chunked read" in str(err.value.__cause__)
    body = {"model": "m", "messages": say("[standin:break-after=2]"), "stream": True}
    lines: list[str] = []
    with (httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=10) as resp,
          pytest.raises(httpx.RemoteProtocolError)):
        lines.extend(resp.iter_lines())
    events = [line for line in lines if line]
    assert len(events) == 3 and "data: [DONE]" not in events


def test_break_after_in_a_plain_call_closes_without_an_answer(client: OpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=say("[standin:break-after=0]"))


def test_token_delay_paces_every_chunk(client: OpenAI) -> None:
    stream = client.chat.completions.create(model="m", stream=True,
                                            messages=say("[standin:token-delay-ms=50] [standin:tokens=5]"))
    stamps = [time.monotonic() for _ in stream]
    assert len(stamps) == 7  # role, five words, finish
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert min(gaps) >= 0.04, gaps


def test_tokens_marker_sets_the_answer_length(client: OpenAI) -> None:
    answer = client.chat.completions.create(model="m", messages=say("[standin:tokens=40]"))
    assert answer.usage.completion_tokens == 40 and len(answer.choices[0].message.content.split()) == 40


# --- models and health -----------------------------------------------------------------------------


def test_models_lists_chat_text_and_embedding_models(client: OpenAI, base_url: str) -> None:
    assert {m.id for m in client.models.list()} == {"gpt-4o-mini", "gpt-3.5-turbo-instruct",
                                                     "text-embedding-3-small"}
    assert httpx.get(base_url.removesuffix("/v1") + "/health", timeout=5).status_code == 200
