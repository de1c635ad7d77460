"""Test helpers shared by several test modules: reference matrices and a local HTTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

F64 = torch.float64


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64)).Q


def decaying(m: int, n: int, seed: int) -> torch.Tensor:
    """U diag(1/i) V^T in float64: the hard case for top-k subspaces (sigma_k ~ sigma_k+1)."""
    r = min(m, n)
    return (orthonormal(m, r, seed) / torch.arange(1, r + 1, dtype=F64)) @ orthonormal(n, r, seed + 1).mT


@contextmanager
def serving(handler: Callable[..., BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve `handler` on a free local port; yields http://127.0.0.1:PORT."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
