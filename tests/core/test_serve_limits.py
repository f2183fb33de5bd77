"""What one client may cost `wikigpt serve`: bodies, headers and connections are bounded in
size and time, each refusal says why, and a non-streaming request whose client left stops
generating. Driven over raw sockets where a well-behaved client library would not misbehave."""
from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402
from test_serve import long_model  # noqa: E402

READ_TIMEOUT_S = 3
MAX_CONNECTIONS = 8
USER = [{"role": "user", "content": "Tell me something."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    tok = support.train_tokenizer(tmp / "tok")
    release = support.build_release(tmp, long_model(tok.vocab_size), tmp / "tok", "long")
    s = support.Server(release, "--read-timeout", str(READ_TIMEOUT_S),
                       "--max-connections", str(MAX_CONNECTIONS)).wait()
    yield s
    s.stop()


def _connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=READ_TIMEOUT_S + 10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_a_68_mb_body_is_refused_before_it_is_read(server):
    size = 68_000_000
    peak_before = _peak_rss_bytes(server.proc.pid)
    sock = _connect(server)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % size)
    sent = [0]

    def upload():  # keeps sending until the server hangs up
        try:
            while sent[0] < size:
                sock.sendall(b" " * 65536)
                sent[0] += 65536
        except OSError:
            pass
    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    health = httpx.get(f"{server.url}/health", timeout=5)  # answered meanwhile
    reply = _read_all(sock)
    uploader.join(timeout=30)
    sock.close()
    assert health.status_code == 200
    assert reply.startswith(b"HTTP/1.1 413 ") and b"declares 68,000,000 bytes" in reply
    assert b"--max-body-bytes" in reply  # says what to change
    assert sent[0] < size // 4  # the server hung up long before the body was through
    assert _peak_rss_bytes(server.proc.pid) - peak_before < 32 * 2**20  # nothing was buffered


def test_a_chunked_body_past_the_cap_is_refused(server):
    def chunks():
        for _ in range(64):  # 4 MiB in all, no Content-Length
            yield b" " * 65536
    r = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "chunked past the limit" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_a_trickled_body_is_cut_off_at_the_read_timeout(server):
    sock = _connect(server)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{")
    reply = _trickle_until_closed(sock, b" ")
    assert reply.startswith(b"HTTP/1.1 408 ") and b"body did not arrive within 3 s" in reply


def test_trickled_headers_are_cut_off_at_the_read_timeout(server):
    sock = _connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\n")
    reply = _trickle_until_closed(sock, b"X-Slow: 1\r\n")
    assert reply.startswith(b"HTTP/1.1 408 ") and b"headers did not arrive within 3 s" in reply


def _trickle_until_closed(sock: socket.socket, piece: bytes) -> bytes:
    """Send `piece` every 0.2 s until the server closes the connection (or 5 timeouts pass)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + 5 * READ_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            sock.sendall(piece)
            chunk = sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:  # reset after the answer
            break
        if not chunk:
            break
        data += chunk
    sock.close()
    assert time.monotonic() < deadline, "the server kept a trickling client past its read timeout"
    return data


def test_huge_headers_are_refused(server):
    sock = _connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    reply = _read_all(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_connections_beyond_the_cap_are_refused_at_once(server):
    extra = 5
    held = [_connect(server) for _ in range(MAX_CONNECTIONS + extra)]  # half-open: no request
    try:
        time.sleep(0.5)  # the refusals are immediate; the rest wait for their header deadline
        refused = [s for s in held if _answered_503(s)]
        assert len(refused) == extra
        busy = httpx.get(f"{server.url}/health", timeout=5)  # a clear answer, not a hang
        assert busy.status_code == 503 and "connections open" in busy.json()["detail"]
        # The half-open ones are closed by the server at the header deadline, freeing the slots.
        open_ones = [s for s in held if s not in refused]
        for s in open_ones:
            assert _read_all(s).startswith(b"HTTP/1.1 408 ")
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    finally:
        for s in held:
            s.close()


def _answered_503(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(64).startswith(b"HTTP/1.1 503 ")
    except socket.timeout:
        return False
    finally:
        sock.settimeout(READ_TIMEOUT_S + 10)


def test_a_non_streaming_request_whose_client_left_stops_generating(server):
    before = httpx.get(f"{server.url}/health").json()["queue"]
    body = {"messages": USER, "temperature": 0, "max_tokens": 768}  # seconds of decoding
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    for _ in range(300):
        after = httpx.get(f"{server.url}/health").json()["queue"]
        if not after["busy"]:
            break
        time.sleep(0.1)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["completed"] == before["completed"]  # it never ran to its 768 tokens
    ok = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                    json={"messages": USER, "temperature": 0, "max_tokens": 4})
    assert ok.status_code == 200


SURROGATE = '"a\\ud800b"'  # JSON for a string holding an unpaired UTF-16 surrogate


@pytest.mark.parametrize("path, body, status, field", [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}]}', 400, "messages.0.content"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": [{"type": "text", "text": %s}]}]}',
     400, "messages"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "stop": [%s]}', 400, "stop"),
    ("/v1/completions", '{"prompt": %s}', 400, "prompt"),
    ("/chat", '{"messages": [{"role": "user", "content": %s}]}', 422, "messages.0.content"),
])
def test_an_unpaired_surrogate_is_a_client_error(server, path, body, status, field):
    r = httpx.post(f"{server.url}{path}", content=(body % SURROGATE).encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(field) and "unpaired UTF-16 surrogate (\\ud800" in message


def test_a_surrogate_in_a_field_name_is_a_client_error(server):
    body = '{"messages": [{"role": "user", "content": "hi"}], %s: 1}' % SURROGATE
    r = httpx.post(f"{server.url}/v1/chat/completions", content=body.encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
