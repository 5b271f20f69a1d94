"""A request without a session that may be a service client's (AUTH_MODE=hybrid): the proxy and
forward auth ask `service_credential` and nothing else (login/service.py says who the client is,
the site's policy what it gets, login/background.py whether the service credential is safe now).

Only reached when no person's session answered for the site, so a signed-in request never pays for it.
"""

from __future__ import annotations

from aiohttp import web

from authproxy import keys
from authproxy.log import audit
from authproxy.login.service import API_KEY_HEADER, REFUSED
from authproxy.routing import Site
from authproxy.sessions.model import Credential
from authproxy.web.common import json_error


async def service_credential(
    request: web.Request, site: Site, *, client_ip: str, method: str, path: str
) -> tuple[Credential | None, web.Response | None]:
    """(credential, None) for a service client that may act at `site`; (None, answer) when it is
    refused; (None, None) when the request is no service client's (an anonymous one).

    Wrong keys are throttled per client network like failed sign-ins: once the budget is spent, a
    presented `X-API-Key` gets `429` with `Retry-After` before it is compared at all."""
    gate = request.app[keys.SERVICE_GATE]
    if not gate:
        return None, None
    refusal = {"actor": "service", "site": site.name, "client_ip": client_ip, "method": method, "path": path}
    regulator = request.app[keys.REGULATOR]
    if API_KEY_HEADER in request.headers:
        wait = await regulator.api_key_retry_after(client_ip)
        if wait is not None:
            audit("service_request", outcome="throttled", **refusal)
            return None, json_error(429, "too_many_attempts", "Too many wrong API keys. Try again later.",
                                    headers={"Retry-After": str(wait)})
    outcome = gate.authenticate(request.headers)
    if outcome is None:
        return None, None
    if outcome == REFUSED:
        await regulator.api_key_failed(client_ip)
        audit("service_request", outcome="invalid_key", **refusal)
        return None, json_error(401, "invalid_api_key", "The API key is not valid.")
    credential = site.policy.for_service()
    fields = {
        "actor": "service",
        "user": outcome.name,
        "via": outcome.via,
        "site": site.name,
        "client_ip": client_ip,
        "method": method,
        "path": path,
    }
    if credential is None:
        audit("service_request", outcome="no_service_credential", **fields)
        return None, json_error(403, "service_not_allowed", f"Service clients are not served at {site.name}.")
    if not request.app[keys.BACKGROUND].usable(site.name):
        audit("service_request", outcome="service_credential_unsafe", **fields)
        return None, json_error(
            503,
            "service_credential_unsafe",
            f"{site.name}'s service token failed its privilege check; see /me.",
        )
    audit("service_request", outcome="allowed", **fields)
    request[keys.SERVICE_CLIENT] = outcome
    return credential, None
