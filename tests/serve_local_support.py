"""Shared pieces of the one-process server tests (tests/test_serve_local*.py): how a server
is started, and a plain HTTP client that also sends bodies over the server's upload limit."""
from __future__ import annotations

import contextlib
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path

import cv2
import numpy as np
from serve_harness import Running, refused_upload, running_server

START_S = 60.0  # healthy in well under a second here; a busy 2-core machine may take longer
LIMIT = 1024 * 1024  # --max-body-bytes of the module's server (JSON floats of 5 images fit)


def serve_cmd(*args: str) -> list[str]:
    """The command line of the one-process `ranet-edge serve`."""
    return [str(Path(sys.executable).with_name("ranet-edge")), "serve", *args]


@contextlib.contextmanager
def local_server(tmp_path: Path, *args: str) -> Iterator[Running]:
    with running_server(tmp_path, serve_cmd, *args, start_s=START_S) as srv:
        yield srv


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def request(method: str, url: str, body: bytes | None = None, headers: dict | None = None
            ) -> tuple[int, Message, bytes]:
    """(status, headers (names case-insensitive), body)."""
    if body is not None and len(body) > LIMIT:
        return refused_upload(method, url, body, headers or {})
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def posted_at_once(port: int, path: str, body: bytes, n: int) -> list[bytes]:
    """The JSON ``body`` POSTed to ``path`` on ``n`` connections, every request sent before any
    answer is read (Connection: close); each connection's whole answer, in order."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(head + body)
        answers = []
        for s in socks:
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            answers.append(data)
        return answers
    finally:
        for s in socks:
            s.close()


def send_all(requests: list[tuple], threads: int = 16) -> list[tuple[int, Message, bytes]]:
    """All requests (method, url, body, headers) from ``threads`` threads at once; answers in order."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda r: request(*r), requests))
