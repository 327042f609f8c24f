"""Adds a no-op RPC to the benchmarked server process, behind the server's own interceptors.

The reads benchmark compares ReleaseControl reads with "a no-op RPC served by
the same server stack". The standard health `Check` is one, but the auth
interceptor lets health probes skip authentication. `/bench.v1.Noop/Ping` is
not a ReleaseControl method, so the same interceptor authenticates its bearer
token and requires `admin` (a method it does not know fails closed), then the
handler answers empty bytes: TLS, interceptor and auth, and nothing else.

Loaded by Python at start from PYTHONPATH, only in the server process that
`bench._server.BenchServer` starts, and only when BENCH_NOOP_SERVICE=1.
"""

from __future__ import annotations

import os
from typing import Any

NOOP_SERVICE = "bench.v1.Noop"


def _install() -> None:
    import grpc
    from grpc import aio

    original = aio.server

    async def ping(request: bytes, context: Any) -> bytes:
        return b""

    def server(*args: Any, **kwargs: Any) -> Any:
        created = original(*args, **kwargs)
        handler = grpc.method_handlers_generic_handler(
            NOOP_SERVICE, {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
        )
        created.add_generic_rpc_handlers((handler,))
        return created

    aio.server = server


if os.environ.get("BENCH_NOOP_SERVICE") == "1":
    _install()
