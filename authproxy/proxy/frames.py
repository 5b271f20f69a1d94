"""Where WebSocket frames begin and end in a byte stream, without touching their payloads.

The bridge relays bytes as they arrive (a browser's frames are already masked the way an upstream
server expects, an upstream's are unmasked the way a browser expects, and no extension is negotiated
on either leg), so the only per-frame work is reading each header. `FrameReader` does that, and so
knows:

- whether the stream is at a frame boundary: the only place a CLOSE frame of our own may be inserted
  (when a session ends, or one side vanishes);
- when a CLOSE frame passes, and its code and reason (the relay finishes the close handshake on it);
- when a frame breaks RFC 6455 in a way that matters to a relay: reserved bits or opcodes (nothing was
  negotiated), the wrong masking for the direction, fragmented or oversized control frames, a
  continuation outside a message, or a message over the size limit. The relay stops at that frame
  and closes both sides, like the upstream would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
_CONTROL_OPS = frozenset({OP_CLOSE, OP_PING, OP_PONG})

PROTOCOL_ERROR = 1002
MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class FrameError:
    """Why a frame was refused, as the close code and reason its sender gets."""

    code: int
    reason: str


class FrameReader:
    """Follows the frames in one direction of a WebSocket connection.

    `feed(data)` returns how many leading bytes of `data` may be passed on: all of them, except that it
    stops right after a CLOSE frame (nothing may follow one), right before a frame that breaks the
    protocol (`error` is then set), and, once `stop_at_boundary` is set, at the first frame boundary.
    Bytes past the returned count are not examined; feed them again if they should be.
    """

    __slots__ = ("_close_buf", "_head", "_in_message", "_left", "_mask", "_masked", "_message_size",
                 "close", "error", "max_message", "stop_at_boundary")

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self._masked = masked  # frames in this direction must (client) / must not (server) be masked
        self.max_message = max_message
        self._head = b""                 # a header split across reads
        self._left = 0                   # payload bytes of the current frame still to come
        self._close_buf: bytearray | None = None   # the payload of a CLOSE frame being read
        self._mask = b""
        self._in_message = False         # a fragmented data message is open
        self._message_size = 0
        self.close: tuple[int | None, str] | None = None   # (code, reason) of the CLOSE that went by
        self.error: FrameError | None = None
        self.stop_at_boundary = False

    @property
    def at_boundary(self) -> bool:
        """Nothing of a frame has been passed on without the rest of it."""
        return self._left == 0 and not self._head

    def feed(self, data: bytes) -> int:  # noqa: C901 - hot path: one pass over the bytes
        n = len(data)
        # The usual read: one whole, unfragmented text/binary frame of under 126 bytes, at a boundary.
        if n < 132 and not self._left and not self._head and not self._in_message:
            b0 = data[0]
            b1 = data[1] if n > 1 else 0
            if (b0 == 0x81 or b0 == 0x82) and (b1 & 0x7F) < 126 and bool(b1 & 0x80) == self._masked \
                    and (6 if self._masked else 2) + (b1 & 0x7F) == n and (b1 & 0x7F) <= self.max_message:
                return n
        i = 0
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                if self._close_buf is not None:
                    self._close_buf += data[i:i + take]
                self._left -= take
                i += take
                if self._left == 0:
                    if self._close_buf is not None:
                        self._closed()
                        return i
                    if self.stop_at_boundary:
                        return i
                continue
            start = i - len(self._head)   # where this frame's header starts (negative: in an earlier read)
            if self._head:
                buf = self._head + data[i:i + 14]
                base = 0
            else:
                buf, base = data, i
            have = len(buf) - base
            if have < 2:
                self._head = buf[base:]
                return n
            b0, b1 = buf[base], buf[base + 1]
            length = b1 & 0x7F
            size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
            if have < size:
                self._head = buf[base:]
                return n
            if length == 126:
                length = int.from_bytes(buf[base + 2:base + 4], "big")
            elif length == 127:
                length = int.from_bytes(buf[base + 2:base + 10], "big")
            problem = self._check(b0, b1, length)
            if problem is not None:
                self.error = problem     # a header begun in an earlier read stays: not at a boundary
                return max(start, 0)
            opcode = b0 & 0x0F
            if opcode == OP_CLOSE:
                self._mask = bytes(buf[base + size - 4:base + size]) if b1 & 0x80 else b""
                self._close_buf = bytearray()
            i += size - len(self._head)
            self._head = b""
            self._left = length
            if length == 0:
                if opcode == OP_CLOSE:
                    self._closed()
                    return i
                if self.stop_at_boundary:
                    return i
        return n

    def _check(self, b0: int, b1: int, length: int) -> FrameError | None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if b0 & 0x70:
            return FrameError(PROTOCOL_ERROR, "reserved bits set")
        if bool(b1 & 0x80) != self._masked:
            return FrameError(PROTOCOL_ERROR, "masked frame" if b1 & 0x80 else "unmasked frame")
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                return FrameError(PROTOCOL_ERROR, "invalid control frame")
            return None
        if opcode not in _DATA_OPS:
            return FrameError(PROTOCOL_ERROR, "unknown opcode")
        if opcode == OP_CONTINUATION:
            if not self._in_message:
                return FrameError(PROTOCOL_ERROR, "continuation outside a message")
        elif self._in_message:
            return FrameError(PROTOCOL_ERROR, "new message inside a fragmented one")
        else:
            self._message_size = 0
        self._message_size += length
        if self._message_size > self.max_message:
            return FrameError(MESSAGE_TOO_BIG, "message too big")
        self._in_message = not fin
        return None

    def _closed(self) -> None:
        payload = bytes(self._close_buf or b"")
        self._close_buf = None
        if self._mask:
            mask = self._mask
            payload = bytes(b ^ mask[k & 3] for k, b in enumerate(payload))
        if len(payload) >= 2:
            self.close = (int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace"))
        else:
            self.close = (None, "")


def close_frame(code: int, reason: str, *, masked: bool) -> bytes:
    """A CLOSE frame (masked when a client sends it), the reason cut to fit a control frame."""
    text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    payload = code.to_bytes(2, "big") + text
    if not masked:
        return bytes((0x80 | OP_CLOSE, len(payload))) + payload
    mask = os.urandom(4)
    return (bytes((0x80 | OP_CLOSE, 0x80 | len(payload))) + mask
            + bytes(b ^ mask[k & 3] for k, b in enumerate(payload)))
