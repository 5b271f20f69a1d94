"""Host and path prefix -> Site (one upstream URL, its adapter, and its credential policy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from authproxy.config.schema import SiteConfig
from authproxy.policy import OWN, CredentialPolicy, policy_for
from authproxy.upstreams.base import UpstreamAdapter
from authproxy.upstreams.registry import adapter_factory


@dataclass(frozen=True, slots=True)
class Site:
    config: SiteConfig
    adapter: UpstreamAdapter
    policy: CredentialPolicy = field(default=OWN, compare=False)   # what the upstream is sent

    @property
    def name(self) -> str:
        return self.config.name

    def upstream_path(self, public_path: str) -> str:
        """The path the upstream sees: the raw public path without the site's prefix.

        Routing matched the *decoded* path, so the prefix may be spelled with escapes (`/qb%74/x`):
        what is cut is as many raw characters as spell the prefix, not len(prefix)."""
        prefix = self.config.path_prefix
        if prefix == "/":
            return public_path
        bare = prefix.rstrip("/")
        if public_path.startswith(bare):
            rest = public_path[len(bare):]
        else:
            rest = _after_decoded(public_path, len(bare.encode()))
        if rest[:3] in ("%2F", "%2f"):  # the separator the match saw after the prefix, escaped
            rest = rest[3:]
        return "/" + rest.lstrip("/")


class Router:
    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        # Longest prefix first; host-specific before wildcard.
        self._ordered = sorted(
            sites, key=lambda s: (len(s.config.path_prefix), bool(s.config.hosts)), reverse=True
        )
        self.by_name = {s.name: s for s in sites}

    @classmethod
    def build(cls, configs: tuple[SiteConfig, ...], http: aiohttp.ClientSession, *,
              auth_mode: str = "session") -> Router:
        return cls([_site(c, adapter_factory(c.type)(c, http), auth_mode) for c in configs])

    def match(self, host: str, path: str) -> Site | None:
        hostname = _strip_port(host).lower()
        for site in self._ordered:
            if site.config.hosts and hostname not in site.config.hosts:
                continue
            prefix = site.config.path_prefix
            if prefix == "/" or path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                return site
        return None


def _site(config: SiteConfig, adapter: UpstreamAdapter, auth_mode: str) -> Site:
    """A site with its credential policy; the service token becomes a credential once, here."""
    token = config.service_token
    service = adapter.service_credential(token.reveal()) if token is not None else None
    return Site(config=config, adapter=adapter,
                policy=policy_for(auth_mode, service, otp=config.auth == "otp"))


_HEX = frozenset("0123456789abcdefABCDEF")


def _after_decoded(raw_path: str, length: int) -> str:
    """`raw_path` without the characters that decode to its first `length` bytes (as aiohttp decodes:
    `%XX` is one byte, a stray `%` is itself)."""
    i = got = 0
    end = len(raw_path)
    while got < length and i < end:
        if raw_path[i] == "%" and i + 2 < end and raw_path[i + 1] in _HEX and raw_path[i + 2] in _HEX:
            i += 3
            got += 1
        else:
            got += len(raw_path[i].encode())
            i += 1
    return raw_path[i:]


def has_dot_segments(path: str) -> bool:
    """Whether a decoded path has `.` or `..` segments. Browsers resolve them (and `%2e`) before sending;
    an upstream would too, after routing here, and `..` could climb out of an upstream URL's base path."""
    return "/." in path and any(seg in (".", "..") for seg in path.split("/"))


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
