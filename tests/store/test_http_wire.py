"""store/http_wire.py: the request bytes, and responses read from canned bytes (the framings etcd's
gateway uses, the ones it may use, and malformed ones that must fail rather than be misread)."""

from __future__ import annotations

import http.client
import io

import pytest

from pgwarden.store.http_wire import encode_post, read_response


def _read(raw: bytes) -> tuple[int, bool, bytes]:
    return read_response(io.BytesIO(raw))


def test_the_request_carries_host_length_headers_and_body_in_one_buffer() -> None:
    raw = encode_post("127.0.0.1:2379", "/v3/kv/range", {"Content-Type": "application/json",
                                                          "Authorization": "tok"}, b'{"a":1}')
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v3/kv/range HTTP/1.1"
    assert b"Host: 127.0.0.1:2379" in lines
    assert b"Content-Length: 7" in lines
    assert b"Authorization: tok" in lines and b"Content-Type: application/json" in lines
    assert body == b'{"a":1}'


@pytest.mark.parametrize("headers", [{"Authorization": "tok\r\nX-Evil: 1"}, {"Bad\nName": "v"},
                                     {"a:b": "v"}])
def test_a_header_that_would_break_the_framing_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="invalid HTTP header"):
        encode_post("h", "/x", headers, b"")


def test_content_length_body_and_keep_alive() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloEXTRA"
    assert _read(raw) == (200, False, b"hello")


def test_chunked_body_with_extensions_and_trailers() -> None:
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\nabc\r\n0a\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert _read(raw) == (200, False, b"abc0123456789")


def test_the_next_response_on_the_same_reader_starts_where_the_last_ended() -> None:
    rfile = io.BytesIO(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
                       b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno")
    assert read_response(rfile) == (200, False, b"ab")
    assert read_response(rfile) == (404, False, b"no")


def test_connection_close_and_http_1_0_say_the_server_will_close() -> None:
    assert _read(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx") == (200, True, b"x")
    assert _read(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx") == (200, True, b"x")
    # No length and not chunked: the body runs to the close.
    assert _read(b"HTTP/1.1 200 OK\r\n\r\nall of it") == (200, True, b"all of it")


def test_100_continue_is_skipped_and_204_has_no_body() -> None:
    assert _read(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n") == (204, False, b"")


def test_a_closed_connection_is_a_remote_disconnect() -> None:
    with pytest.raises(http.client.RemoteDisconnected):
        _read(b"")


@pytest.mark.parametrize("raw", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"HTTP/1.1 42 Odd\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: nine\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n",
    b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n",
])
def test_a_malformed_answer_fails(raw: bytes) -> None:
    with pytest.raises(http.client.HTTPException):
        _read(raw)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n0\r\n\r\n",
])
def test_a_cut_or_misframed_body_is_an_incomplete_read(raw: bytes) -> None:
    with pytest.raises(http.client.IncompleteRead):
        _read(raw)
