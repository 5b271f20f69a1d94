"""systemd's readiness protocol (sd_notify): one datagram to $NOTIFY_SOCKET, nothing more.

With `Type=notify` (deploy/systemd/authproxy.service) systemd counts authproxy as started only when it
says READY=1, which `authproxy run` does once every listener accepts connections (the store is open
by then), so units ordered after it never meet a refused connection; STOPPING=1 says a graceful stop
has begun. Not under systemd (no $NOTIFY_SOCKET) it does nothing. These few lines replace a dependency
(python-systemd, sdnotify) for the two messages authproxy sends.
"""

from __future__ import annotations

import os
import socket

from authproxy.log import log

ENV = "NOTIFY_SOCKET"


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to the service manager; False when there is none to tell."""
    address = os.environ.get(ENV, "")
    if not address:
        return False
    if address.startswith("@"):  # Linux abstract namespace
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET is not a unix socket path; readiness not reported",
                    extra={"fields": {"notify_socket": address}})
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify the service manager", extra={"fields": {"error": str(exc)}})
        return False
    return True
