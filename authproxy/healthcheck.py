"""`authproxy healthcheck`: ask the running server's liveness endpoint, for container HEALTHCHECKs.

Why a subcommand and not curl: the image stays free of an HTTP client binary, and the check follows
the configuration the server itself runs with (HOST, PORT, HTTPS_ENABLED, AUTHPROXY_PREFIX) instead of
repeating it in the Dockerfile. Plain blocking http.client: one request, no event loop to start.
"""

from __future__ import annotations

import http.client
import ssl

from authproxy.config.schema import ServerConfig

# Where to connect when the server listens on every address.
_ANY = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def probe(server: ServerConfig, timeout: float) -> tuple[bool, str]:
    """(healthy, what happened): GET {prefix}/healthz on the configured listener answers 200."""
    host = _ANY.get(server.host, server.host.strip("[]"))
    scheme = "https" if server.https_enabled else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{server.port}{server.prefix}/healthz"
    conn: http.client.HTTPConnection
    if server.https_enabled:
        # Liveness of our own process on our own socket: the certificate (often self-signed, or issued
        # for a public name the loopback address does not carry) is not what this check is about, and
        # nothing secret is sent.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(host, server.port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, server.port, timeout=timeout)
    try:
        conn.request("GET", f"{server.prefix}/healthz",
                     headers={"Accept": "application/json", "User-Agent": "authproxy-healthcheck"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return status == 200, f"{url}: HTTP {status}"
