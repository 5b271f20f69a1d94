"""Every adapter type by name: `UPSTREAM_TYPE` / a site's `type` -> its adapter class.

    ADAPTERS["technitium"] -> TechnitiumAdapter   (built per site: TechnitiumAdapter(site, http))

An unknown name fails at start-up with the list of known ones.
"""

from __future__ import annotations

from authproxy.errors import ConfigError
from authproxy.upstreams.adguard import AdGuardAdapter
from authproxy.upstreams.base import UpstreamAdapter
from authproxy.upstreams.generic import GenericAdapter
from authproxy.upstreams.pihole import PiholeAdapter
from authproxy.upstreams.qbittorrent import QBittorrentAdapter
from authproxy.upstreams.technitium import TechnitiumAdapter
from authproxy.upstreams.transmission import TransmissionAdapter
from authproxy.upstreams.truenas import TrueNASAdapter

ADAPTERS: dict[str, type[UpstreamAdapter]] = {
    cls.name: cls
    for cls in (
        AdGuardAdapter,
        GenericAdapter,
        PiholeAdapter,
        QBittorrentAdapter,
        TechnitiumAdapter,
        TransmissionAdapter,
        TrueNASAdapter,
    )
}


def adapter_factory(type_name: str) -> type[UpstreamAdapter]:
    try:
        return ADAPTERS[type_name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ConfigError(
            [f"UPSTREAM_TYPE: unknown upstream type {type_name!r}; known types: {known}"]
        ) from None
