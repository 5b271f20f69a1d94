"""Real `authproxy run` processes (replicas sharing one store) for the fault and scale tests.

`Replicas(process_factory, tmp_path)`: `await replicas.start(n, **env)` starts n processes on their own ports
with one SESSION_SECRET (so a cookie from one is good at every other); `.sign_in(i)`, `.check(i, cookie)`,
`.sign_out(i, cookie)` talk to replica i over plain HTTP (TRUST_PROXY from loopback, X-Forwarded-Proto:
https, as a TLS-terminating proxy sends it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.integration.test_cli import ROOT, _wait_healthy, base_env
from tests.support.procs import ManagedProcess, free_port

LOGIN = "/_authproxy/api/auth/login"
LOGOUT = "/_authproxy/api/auth/logout"
SESSION = "/_authproxy/api/auth/session"
HEALTHZ = "/_authproxy/healthz"
FORWARDED = {"X-Forwarded-Proto": "https"}
COOKIE = "__Host-authproxy"


@dataclass
class Replicas:
    process_factory: Callable[..., ManagedProcess]
    tmp_path: Path
    procs: list[ManagedProcess] = field(default_factory=list)
    bases: list[str] = field(default_factory=list)
    http: aiohttp.ClientSession | None = None

    async def start(self, count: int, upstream: str, **env: str) -> Replicas:
        if self.http is None:
            self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                              timeout=aiohttp.ClientTimeout(total=10))
        for _ in range(count):
            i = len(self.procs)
            port = free_port()
            full = base_env(UPSTREAM_URL=upstream, UPSTREAM_TYPE="technitium", TRUST_PROXY="true",
                            AUTHPROXY_DATA_DIR=str(self.tmp_path / f"data{i}"), PORT=str(port),
                            HOST="127.0.0.1", SESSION_SECRET="s" * 40, LOG_FORMAT="text", ACCESS_LOG="false",
                            **env)
            self.procs.append(self.process_factory([sys.executable, "-m", "authproxy", "run"], env=full,
                                                   inherit_env=False, cwd=ROOT, name=f"authproxy-{i}"))
            self.bases.append(f"http://127.0.0.1:{port}")
        for proc, base in zip(self.procs, self.bases, strict=True):
            await _wait_healthy(self.client, base + HEALTHZ, proc, timeout=30)
        return self

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self.http is not None
        return self.http

    async def sign_in(self, i: int, user: tuple[str, str], *,
                      client_ip: str | None = None) -> tuple[int, str | None]:
        """`client_ip`: the address the front proxy says the person has (X-Forwarded-For; the throttle
        counts per address too)."""
        body = {"username": user[0], "password": user[1]}
        headers = {**FORWARDED, **({"X-Forwarded-For": client_ip} if client_ip else {})}
        async with self.client.post(self.bases[i] + LOGIN, json=body, headers=headers) as resp:
            cookie = resp.cookies.get(COOKIE)
            return resp.status, cookie.value if cookie is not None and resp.status == 200 else None

    async def check(self, i: int, cookie: str) -> tuple[int, bool | None]:
        """(status, authenticated) of GET /session with this cookie at replica i."""
        async with self.client.get(self.bases[i] + SESSION, headers={**FORWARDED,
                                                                    "Cookie": f"{COOKIE}={cookie}"}) as resp:
            if resp.status != 200:
                return resp.status, None
            return resp.status, bool((await resp.json())["authenticated"])

    async def sign_out(self, i: int, cookie: str) -> int:
        async with self.client.post(self.bases[i] + LOGOUT, json={},
                                    headers={**FORWARDED, "Cookie": f"{COOKIE}={cookie}"}) as resp:
            return resp.status

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        for proc in self.procs:
            proc.stop()


def now() -> float:
    return time.monotonic()
