"""The server under pressure: a full queue answers 429, clients that leave free their place, and
SIGTERM lets in-flight requests finish. One request in flight at a time (--max-batch 1) and one
waiting (--max-queue 1); a 1024-position tiny model makes "long" requests (1000 new tokens)."""

import json
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest

from test_serve_support import sse_events, start_server

LONG = dict(prompt="def main():\n", max_tokens=1000, temperature=0, stop=["\x00never"])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "--max-batch", "1", "--max-queue", "1",
                       overrides=("model.max_position_embeddings=1024", "inference.max_length=1024"))
    yield srv
    srv.stop()


def wait_for(client, what, predicate):
    """Poll /health until ``predicate(worker state)``; fails after a minute with the last state."""
    state = None
    for _ in range(1200):
        state = client.get("/health").json()["worker"]
        if predicate(state):
            return state
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}: {state}")


def first_event(lines):
    """The first ``data:`` payload from ``lines`` (an iterator the caller keeps: dropping it
    would close the response)."""
    for line in lines:
        if line.startswith("data: "):
            return json.loads(line[6:])
    raise AssertionError("stream ended before any event")


def raw_request(url, body: dict) -> socket.socket:
    """Send a non-streamed completion request on a bare socket, leaving the answer unread."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    data = json.dumps(body).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_full_queue_answers_429_and_leaving_clients_free_their_place(server):
    with server.client() as client, server.client() as other:
        with other.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as first:
            assert first.status_code == 200
            first_lines = first.iter_lines()
            first_event(first_lines)                      # running: the one slot is taken
            waiting = raw_request(server.url, LONG)       # takes the one place in the queue
            wait_for(client, "the queued request", lambda s: s["waiting"] == 1)
            r = client.post("/v1/completions", json=LONG)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            error = r.json()["error"]
            assert error["type"] == "overloaded_error" and "1 requests are waiting (limit 1)" in error["message"]

            waiting.close()                               # a non-streamed client leaves the queue
            wait_for(client, "the queue to empty", lambda s: s["waiting"] == 0 and s["cancelled"] == 1)
            with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as queued:
                assert queued.status_code == 200          # a streamed one leaves before its first event
            wait_for(client, "the queue to empty", lambda s: s["waiting"] == 0 and s["cancelled"] == 2)
            with client.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as second:
                assert second.status_code == 200          # queued behind the first
                first.close()                             # the first client leaves mid-stream ...
                event = first_event(second.iter_lines())  # ... so the second one runs
                assert event["choices"][0]["index"] == 0
        state = wait_for(client, "both running streams to be cancelled", lambda s: s["cancelled"] == 4)
        # Both streams were cut short: together they made fewer tokens than one full request.
        assert state["completion_tokens"] < LONG["max_tokens"]
        assert (state["rejected"], state["running_rows"], state["failed"]) == (1, 0, 0)
        assert client.post("/v1/completions", json={**LONG, "max_tokens": 3}).status_code == 200


def test_sigterm_drains_requests_in_flight_then_exits(server):
    results = {}
    with server.client() as client:
        queued = threading.Thread(target=lambda: results.update(
            queued=client.post("/v1/completions", json={**LONG, "max_tokens": 24})))
        with server.client() as streaming, streaming.stream(
                "POST", "/v1/completions", json={**LONG, "max_tokens": 40, "stream": True}) as r:
            lines = r.iter_lines()
            events = [first_event(lines)]
            queued.start()
            wait_for(client, "the queued request", lambda s: s["waiting"] == 1)
            server.proc.send_signal(signal.SIGTERM)
            events += sse_events(lines)
        queued.join()
    assert server.proc.wait(timeout=120) == -signal.SIGTERM
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    answer = results["queued"]
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 24
