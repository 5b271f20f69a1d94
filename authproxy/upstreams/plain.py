"""An upstream with no accounts of its own (one admin password, an API behind one key): people sign in
with authproxy's own accounts (`auth = "local"`), and the upstream gets the site's service credential,
if one is configured, in one header; the client's own copy of that header never reaches it.

    options.header  the header the upstream reads its key from (default "Authorization")
    options.scheme  what goes before the key in it (default "Bearer"; "" for the bare key)

Per-person keys of such an upstream (TSIG keys, several API keys) are the local accounts' resources
(README "Local accounts"), injected by the local gate, not here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from multidict import CIMultiDict, CIMultiDictProxy

from authproxy.sessions.model import Credential
from authproxy.upstreams.base import LoginResult, UpstreamAdapter, UpstreamRequest

OPTIONS = {"header", "scheme"}
NO_ACCOUNTS = "This upstream has no accounts of its own; sign in with an authproxy account."


class PlainAdapter(UpstreamAdapter):
    name: ClassVar[str] = "plain"

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> list[str]:
        problems = [f"options.{k}: unknown for type plain; known: header, scheme" for k in options
                    if k not in OPTIONS]
        for key in OPTIONS & set(options):
            if not isinstance(options[key], str):
                problems.append(f"options.{key}: must be text")
        if isinstance(options.get("header"), str) and not options["header"].strip():
            problems.append("options.header: must name a header, e.g. X-Api-Key")
        return problems

    @property
    def _header(self) -> str:
        return str(self.site.options.get("header", "Authorization")).strip()

    def _value(self, credential: Credential) -> str:
        scheme = str(self.site.options.get("scheme", "Bearer")).strip()
        return f"{scheme} {credential.secret}" if scheme else credential.secret

    async def login(self, username: str, password: str, totp: str | None, client_ip: str) -> LoginResult:
        return LoginResult(status="invalid", message=NO_ACCOUNTS)

    async def logout(self, credential: Credential) -> None:
        return None

    async def keepalive(self, credential: Credential) -> bool:
        return True

    def prepare_request(self, req: UpstreamRequest, credential: Credential | None) -> None:
        req.headers.popall(self._header, None)
        if credential is not None and credential.secret:
            req.headers[self._header] = self._value(credential)

    def forward_auth_headers(self, credential: Credential) -> dict[str, str]:
        return {self._header: self._value(credential)} if credential.secret else {}

    def wants_body(self, req: UpstreamRequest, status: int, headers: CIMultiDictProxy[str]) -> bool:
        return False

    def is_expired(self, status: int, headers: CIMultiDictProxy[str], body: bytes | None) -> bool:
        return False

    def filter_response_headers(self, headers: CIMultiDict[str]) -> None:
        return None
