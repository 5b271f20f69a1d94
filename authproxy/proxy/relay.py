"""The WebSocket relay: bytes from one socket to the other, and the close handshake done right.

Why bytes and not messages: a relay that decodes every message and encodes it again (aiohttp's
`receive()` / `send_frame()` on both sides) spends two reads, two parses and two writes of Python per
message. The frames a browser sends are already masked as an upstream server expects, and an
upstream's are unmasked as a browser expects; with no extension negotiated on either leg they can go
through unchanged. So each leg is a small `asyncio.Protocol` that writes what it reads to the other
leg's transport, and a `FrameReader` follows only the frame headers, which tells the relay:

- when a CLOSE goes by. Each side's CLOSE is passed on and the peer's answer comes back the same way,
  so close codes cross the bridge as the endpoints chose them. Once a CLOSE has gone each way on a
  leg, the relay closes that leg's TCP connection;
- where the frame boundaries are. When a session ends (or the app stops, or one side vanishes) the
  relay has CLOSE frames of its own to send; they go in at the next boundary of the stream they join
  (an interrupted frame can never be completed: then the connection is aborted instead);
- when a side breaks the protocol: that side gets 1002/1009 and is dropped, the other a going-away.

Flow control is the transports' own: when a leg cannot write fast enough, its peer stops reading.
Whatever happens, `close_timeout` seconds after closing began (`STOP_LINGER` after a CLOSE of our
own) the connections still open are aborted, so `done` always resolves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, cast

from authproxy.proxy.frames import FrameReader, close_frame

Side = Literal["client", "upstream", "watch"]

UPSTREAM_LOST = (1011, "upstream connection lost")
UPSTREAM_ERROR = 1011
CLIENT_GONE = (1001, "client went away")
STOP_LINGER = 1.0   # after our own CLOSE (session ended, shutdown), how long a side may take to answer


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the relay ended, for the log: who started the end, how, with which code."""

    side: Side
    kind: Literal["close", "lost", "error", "stop"]
    code: int | None = None
    reason: str = ""


class Leg(asyncio.Protocol):
    """One side's connection: reads that side's frames, writes the other side's."""

    __slots__ = (
        "activity_due",
        "clean",
        "forwarding",
        "got_close",
        "lost",
        "on_activity",
        "original",
        "peer",
        "pending",
        "reader",
        "received",
        "relay",
        "sent_close",
        "side",
        "transport",
    )

    def __init__(self, relay: FrameRelay, side: Literal["client", "upstream"], *, max_message: int) -> None:
        self.relay = relay
        self.side = side
        # A browser (client) masks every frame it sends; a server never does.
        self.reader = FrameReader(masked=side == "client", max_message=max_message)
        self.transport: asyncio.Transport | None = None
        self.peer: Leg = self
        self.forwarding = True      # what this side sends goes on to the peer
        self.clean = True           # once not forwarding: the forwarded bytes ended on a frame boundary
        self.pending: bytes | None = None   # our CLOSE for the peer, sent at this stream's next boundary
        self.got_close = False      # a CLOSE came from this side
        self.received: tuple[int | None, str] = (None, "")
        self.sent_close = False     # a CLOSE went to this side
        self.lost = False
        self.original: asyncio.BaseProtocol | None = None  # aiohttp's protocol, told when the socket goes
        # Set by a timer when the next frame from this side should be reported (no clock read per frame).
        self.activity_due = False
        self.on_activity: Callable[[], None] | None = None

    # ---- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # only via set_protocol
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:  # noqa: C901 - hot path: every WebSocket read
        if self.activity_due:
            self.activity_due = False
            if self.on_activity is not None:
                self.on_activity()
        reader = self.reader
        if reader.error is not None:  # a side that broke the protocol is not listened to any more
            return
        n = reader.feed(data)
        if n == len(data) and reader.close is None and reader.error is None and not reader.stop_at_boundary:
            if self.forwarding:   # the usual case: whole frames, nothing to decide
                peer = self.peer.transport
                if peer is not None and not peer.is_closing():
                    peer.write(data)
            return
        while True:
            if self.forwarding and n:
                peer = self.peer.transport
                if peer is not None and not peer.is_closing():
                    peer.write(data if n == len(data) else data[:n])
            if reader.error is not None:
                self.relay._protocol_error(self)
                return
            if reader.close is not None:
                close, reader.close = reader.close, None
                self.relay._close_from(self, close)
            elif reader.stop_at_boundary and reader.at_boundary:
                reader.stop_at_boundary = False
                self.relay._cut(self)
            data = data[n:]
            if not data:
                return
            n = reader.feed(data)
            if not n and reader.error is None:  # cannot happen (feed always consumes or flags); never spin
                self.relay.abort()
                return

    def eof_received(self) -> bool | None:
        return None  # half-close is not a WebSocket thing: close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        original, self.original = self.original, None
        self.relay._lost(self)
        if original is not None:
            original.connection_lost(exc)

    def pause_writing(self) -> None:
        self.peer._reading(False)

    def resume_writing(self) -> None:
        self.peer._reading(True)

    # ---- helpers -------------------------------------------------------------------------------

    def _reading(self, on: bool) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _stop_forwarding(self) -> None:
        if self.forwarding:
            self.forwarding = False
            self.clean = self.reader.at_boundary

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _close(self, *, abort: bool = False) -> None:
        transport = self.transport
        if transport is not None and not self.lost:
            transport.abort() if abort else transport.close()


class FrameRelay:
    """Two legs, the close handshake across them, and `done` when both connections are gone."""

    def __init__(self, *, max_message: int, close_timeout: float) -> None:
        self.client = Leg(self, "client", max_message=max_message)
        self.upstream = Leg(self, "upstream", max_message=max_message)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.close_timeout = close_timeout
        self.outcome: Outcome | None = None
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[Outcome] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None

    # ---- setting up ----------------------------------------------------------------------------

    def attach(self, leg: Leg, transport: asyncio.Transport) -> None:
        """Make `leg` the protocol of `transport` (what aiohttp had is told when the socket goes)."""
        previous = transport.get_protocol()
        if leg is self.client:
            leg.original = previous
        transport.set_protocol(leg)
        leg.connection_made(transport)
        if transport.is_closing():
            leg.lost = True
            self._lost(leg)

    def start(self, client_early: bytes = b"", upstream_early: bytes = b"") -> None:
        """Both legs attached and the client's 101 sent: pass on what either side sent already, read on."""
        # Resume first: passing the early bytes on may pause a side again (flow control), and that
        # pause must stand. The client leg was never paused.
        self.upstream._reading(True)
        for leg, early in ((self.client, client_early), (self.upstream, upstream_early)):
            if early and not leg.lost:
                leg.data_received(early)

    def stop(self, code: int, reason: str, *, linger: float = STOP_LINGER) -> None:
        """End the bridge from outside (session ended, shutting down): the client gets `code`, and
        both sides get `linger` seconds to answer our CLOSE before their connections are closed."""
        if self.outcome is None:
            self.outcome = Outcome("watch", "stop", code, reason)
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(min(linger, self.close_timeout), self.abort)
        self._send_close(self.client, code, reason)
        self._send_close(self.upstream, 1001, reason)
        self._progress()

    def abort(self) -> None:
        self.client._close(abort=True)
        self.upstream._close(abort=True)

    # ---- events from the legs ------------------------------------------------------------------

    def _close_from(self, leg: Leg, close: tuple[int | None, str]) -> None:
        """A CLOSE came from `leg`'s side; if it was forwarded the peer has it now."""
        leg.got_close = True
        leg.received = close
        if leg.forwarding:
            leg.peer.sent_close = True
        leg._stop_forwarding()    # nothing may follow a CLOSE
        leg.pending = None        # a CLOSE of ours waiting for this stream's boundary is not needed now
        leg.reader.stop_at_boundary = False
        if self.outcome is None:
            self.outcome = Outcome(leg.side, "close", close[0], close[1])
        self._progress()

    def _cut(self, leg: Leg) -> None:
        """`leg`'s stream reached the boundary our CLOSE for its peer was waiting for."""
        frame, leg.pending = leg.pending, None
        leg._stop_forwarding()
        if frame is not None:
            leg.peer._write(frame)
            leg.peer.sent_close = True
        self._progress()

    def _protocol_error(self, leg: Leg) -> None:
        """`leg`'s side broke the protocol: it gets the reason and is dropped; its peer goes away."""
        error = leg.reader.error
        assert error is not None
        leg._stop_forwarding()
        if self.outcome is None:
            self.outcome = Outcome(leg.side, "error", error.code, error.reason)
        leg.got_close = True        # nothing more will be read from it
        self._send_close(leg, error.code, error.reason)
        leg._close()
        if leg is self.client:
            self._send_close(self.upstream, *CLIENT_GONE)
        else:
            self._send_close(self.client, UPSTREAM_ERROR, "upstream error")
        self._progress()

    def _lost(self, leg: Leg) -> None:
        if self.outcome is None:
            self.outcome = Outcome(leg.side, "lost")
        self._progress()

    # ---- the close handshake -------------------------------------------------------------------

    def _send_close(self, to: Leg, code: int, reason: str) -> None:
        """Our CLOSE for `to`: now if the stream into it is at a frame boundary, else at the next one."""
        if to.sent_close or to.lost:
            return
        source = to.peer
        frame = close_frame(code, reason, masked=to is self.upstream)
        at_boundary = source.reader.at_boundary if source.forwarding else source.clean
        if at_boundary:
            source._stop_forwarding()
            to._write(frame)
            to.sent_close = True
        elif source.lost or not source.forwarding:
            to._close(abort=True)   # a frame was cut off mid-way: nothing valid can follow
        else:
            source.pending = frame
            source.reader.stop_at_boundary = True

    def _progress(self) -> None:
        client, upstream = self.client, self.upstream
        if self._timer is None and not self.done.done():
            self._timer = self._loop.call_later(self.close_timeout, self.abort)
        if upstream.lost and not client.sent_close:
            if client.got_close:   # the client's CLOSE never got its answer from upstream: answer it
                code, reason = client.received
                self._send_close(client, code if code is not None else 1000, reason)
            else:
                self._send_close(client, *UPSTREAM_LOST)
        if client.lost and not upstream.sent_close:
            self._send_close(upstream, *CLIENT_GONE)
        for leg in (client, upstream):
            if leg.sent_close and leg.got_close:
                leg._close()
        if client.lost and upstream.lost and not self.done.done():
            if self._timer is not None:
                self._timer.cancel()
            self.done.set_result(self.outcome or Outcome("client", "lost"))
