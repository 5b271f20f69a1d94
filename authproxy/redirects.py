"""Post-login redirect (``rd=``) validation.

A return URL comes from the request, so it is attacker-controlled: a loose check turns the login page into an
open redirect that sends a freshly signed-in user anywhere. The rules, modelled on oauth2-proxy's
``pkg/app/redirect/validator.go`` but stricter:

* relative targets must be one path-absolute reference (``/path?q#f``); they are resolved against the
  current host, so they can never leave it;
* absolute targets must be ``https://`` (``http://`` only with ``allow_http``) and name an allowed host and
  port; no userinfo, no backslashes, no percent-encoding or non-ASCII in the authority;
* nothing may contain whitespace or control characters, raw or percent-encoded (at any encoding depth),
  because browsers silently drop or rewrite them and so parse a different URL than we checked;
* the path may not contain ``//``, ``\\`` or ``.``/``..`` segments (even encoded), which some browsers and
  upstream servers normalise into a scheme-relative ``//evil.example``.

Domain rules: ``foo.bar`` (that host only), ``.bar.foo`` (the host and any subdomain on a dot boundary),
``*.bar.foo`` (subdomains only), each optionally ``:8080`` (that port only) or ``:*`` (any port). Without a
port only the scheme's default port is allowed. Pure module: no aiohttp import, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

__all__ = ["MAX_REDIRECT_LENGTH", "DomainRule", "RedirectPolicy"]

MAX_REDIRECT_LENGTH = 2048
_MAX_DECODE_ROUNDS = 4
_DEFAULT_PORTS = {"http": 80, "https": 443}

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_ABSOLUTE_RE = re.compile(r"(https?)://([^/?#]*)(.*)", re.IGNORECASE | re.DOTALL)
_ANY_PORT = "*"
_PRINTABLE_ASCII = "".join(chr(c) for c in range(0x21, 0x7F))
_NESTED_RE = re.compile(r"/(?:\.{0,2})/")
_UNSAFE_RAW = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
_UNSAFE_DECODED = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _is_unsafe_char(ch: str) -> bool:
    """Raw input: any whitespace, C0/C1 control, DEL, invisible format or unassigned code point."""
    return ch.isspace() or unicodedata.category(ch) in _UNSAFE_RAW


def _is_unsafe_decoded(ch: str) -> bool:
    """Decoded input: controls and invisible characters (an encoded space in a query is fine)."""
    return unicodedata.category(ch) in _UNSAFE_DECODED


def _fully_decoded(value: str) -> str | None:
    """Percent-decode until stable; None if it takes suspiciously many rounds (layered encoding)."""
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(value, errors="surrogateescape")
        if decoded == value:
            return value
        value = decoded
    return None


def _parse_port(text: str) -> int | None:
    if not _PORT_RE.fullmatch(text):
        return None
    port = int(text)
    return port if 0 < port < 65536 else None


def _normalise_host(host: str) -> str | None:
    """Lower-case DNS name or IP literal (IPv6 in brackets), or None when it is not one."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        return None
    return host


def _is_ip(host: str) -> bool:
    if host.startswith("["):
        return True
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _split_host_port(authority: str) -> tuple[str, str | None] | None:
    """``host[:port]`` -> (host, port text or None). IPv6 literals keep their brackets."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            return None
        host, rest = authority[: end + 1], authority[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            return None
        return host, rest[1:]
    if authority.count(":") > 1:
        return None
    host, sep, port = authority.partition(":")
    return host, (port if sep else None)


@dataclass(frozen=True, slots=True)
class DomainRule:
    """One allowed-domain entry, parsed once at start-up."""

    host: str
    apex: bool  # the host itself matches
    subdomains: bool  # *.host matches
    port: int | str | None  # None = default port only, "*" = any, int = exactly that

    @classmethod
    def parse(cls, rule: str) -> DomainRule:
        """Parse ``[.|*.]host[:port|:*]``; raises ValueError naming the problem (config validation)."""
        text = rule.strip().lower()
        if not text or "/" in text or "@" in text or "\\" in text:
            raise ValueError(
                f"redirect domain {rule!r} must look like 'host', '.domain', '*.domain' or 'host:port'"
            )
        apex, subdomains = True, False
        if text.startswith("*."):
            text, apex, subdomains = text[2:], False, True
        elif text.startswith("."):
            text, subdomains = text[1:], True
        split = _split_host_port(text)
        if split is None:
            raise ValueError(f"redirect domain {rule!r} has an invalid port")
        host_text, port_text = split
        host = _normalise_host(host_text)
        if host is None:
            raise ValueError(f"redirect domain {rule!r} is not a valid host name")
        if subdomains and _is_ip(host):
            raise ValueError(f"redirect domain {rule!r}: subdomain rules cannot name an IP address")
        port: int | str | None = None
        if port_text is not None:
            if port_text == _ANY_PORT:
                port = _ANY_PORT
            else:
                port = _parse_port(port_text)
                if port is None:
                    raise ValueError(f"redirect domain {rule!r} has an invalid port {port_text!r}")
        return cls(host=host, apex=apex, subdomains=subdomains, port=port)

    def matches(self, host: str, port: int | None, scheme: str) -> bool:
        """Whether a normalised target host/port (None = no explicit port) is allowed by this rule."""
        host_ok = (self.apex and host == self.host) or (
            self.subdomains and not _is_ip(host) and host.endswith("." + self.host)
        )
        if not host_ok:
            return False
        if self.port == _ANY_PORT:
            return True
        effective = port if port is not None else _DEFAULT_PORTS[scheme]
        if self.port is None:
            return effective == _DEFAULT_PORTS[scheme]
        return effective == self.port


class RedirectPolicy:
    """Decides whether a post-login return URL is safe; ``validate`` returns the URL to use or None."""

    def __init__(self, allowed_domains: Iterable[str] = (), *, allow_http: bool = False) -> None:
        self.rules: tuple[DomainRule, ...] = tuple(DomainRule.parse(d) for d in allowed_domains)
        self.allow_http = allow_http

    def validate(
        self, target: str, *, current_host: str | None = None, current_scheme: str = "https"
    ) -> str | None:
        """The safe redirect URL for ``target``, or None when it must not be followed.

        Relative targets come back absolute (``current_scheme://current_host/path``) when ``current_host``
        (the request's own ``host[:port]``) is given, else unchanged.
        """
        if not isinstance(target, str) or not target or len(target) > MAX_REDIRECT_LENGTH:
            return None
        if "\\" in target or any(_is_unsafe_char(ch) for ch in target):
            return None
        decoded = _fully_decoded(target)
        if decoded is None or "\\" in decoded or any(_is_unsafe_decoded(ch) for ch in decoded):
            return None
        if target.startswith("/"):
            return self._relative(target, current_host, current_scheme)
        return self._absolute(target)

    def _relative(self, target: str, current_host: str | None, current_scheme: str) -> str | None:
        if not _safe_path(target):
            return None
        target = _ascii(target)
        if current_host is None:
            return target
        scheme = current_scheme.lower()
        authority = _normalise_authority(current_host)
        if scheme not in _DEFAULT_PORTS or authority is None:
            return None
        return f"{scheme}://{authority}{target}"

    def _absolute(self, target: str) -> str | None:
        match = _ABSOLUTE_RE.fullmatch(target)
        if match is None:
            return None  # javascript:, data:, //host, host/path, https:/\host, ...
        scheme, authority, rest = match.group(1).lower(), match.group(2), match.group(3)
        if scheme == "http" and not self.allow_http:
            return None
        if rest and rest[0] not in "/?#":
            return None
        if not authority.isascii() or "%" in authority or "@" in authority:
            return None
        split = _split_host_port(authority)
        if split is None:
            return None
        host = _normalise_host(split[0])
        port = None if split[1] is None else _parse_port(split[1])
        if host is None or (split[1] is not None and port is None):
            return None
        if not _safe_path(rest):
            return None
        if not any(rule.matches(host, port, scheme) for rule in self.rules):
            return None
        port_part = f":{port}" if port is not None else ""
        return f"{scheme}://{host}{port_part}{_ascii(rest)}"


def _ascii(reference: str) -> str:
    """Percent-encode non-ASCII (as browsers do), so the result is always a valid Location value."""
    return reference if reference.isascii() else quote(reference, safe=_PRINTABLE_ASCII)


def _normalise_authority(authority: str) -> str | None:
    split = _split_host_port(authority)
    if split is None:
        return None
    host = _normalise_host(split[0])
    if host is None:
        return None
    if split[1] is None:
        return host
    port = _parse_port(split[1])
    return None if port is None else f"{host}:{port}"


def _safe_path(reference: str) -> bool:
    """No ``//`` or ``/./``/``/../`` anywhere (a nested raw URL in the query is a second-order open
    redirect through the target app), and the path has neither once fully decoded either."""
    if _NESTED_RE.search(reference):
        return False
    path = re.split(r"[?#]", reference, maxsplit=1)[0]
    decoded = _fully_decoded(path)
    if decoded is None:
        return False
    for candidate in (path, decoded):
        segments = candidate.split("/")
        # segments[0] is the empty text before the leading "/"; an empty one later means "//".
        # Blank segments ("/%20/") and dot segments collapse into "//" in some parsers.
        if any(not seg.strip() or seg.strip() in {".", ".."} for seg in segments[1:-1]):
            return False
        if segments[-1].strip() in {".", ".."}:
            return False
    return True
