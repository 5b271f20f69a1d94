"""Host and path prefix -> Site (one upstream URL + its adapter)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from authproxy.config.schema import SiteConfig
from authproxy.upstreams.base import UpstreamAdapter, adapter_factory


@dataclass(frozen=True, slots=True)
class Site:
    config: SiteConfig
    adapter: UpstreamAdapter

    @property
    def name(self) -> str:
        return self.config.name

    def upstream_path(self, public_path: str) -> str:
        """The path the upstream sees: the public path without the site's prefix."""
        prefix = self.config.path_prefix
        if prefix == "/":
            return public_path
        return "/" + public_path[len(prefix):].lstrip("/")


class Router:
    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        # Longest prefix first; host-specific before wildcard.
        self._ordered = sorted(sites, key=lambda s: (len(s.config.path_prefix), bool(s.config.hosts)), reverse=True)
        self.by_name = {s.name: s for s in sites}

    @classmethod
    def build(cls, configs: tuple[SiteConfig, ...], http: aiohttp.ClientSession) -> Router:
        return cls([Site(config=c, adapter=adapter_factory(c.type)(c, http)) for c in configs])

    def match(self, host: str, path: str) -> Site | None:
        hostname = _strip_port(host).lower()
        for site in self._ordered:
            if site.config.hosts and hostname not in site.config.hosts:
                continue
            prefix = site.config.path_prefix
            if prefix == "/" or path == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/"):
                return site
        return None


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
