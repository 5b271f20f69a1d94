"""FrameReader: frame boundaries, CLOSE frames and protocol errors in a byte stream, however it is split."""

from __future__ import annotations

import os

import pytest

from authproxy.proxy.frames import (
    MESSAGE_TOO_BIG,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    PROTOCOL_ERROR,
    FrameReader,
    close_frame,
)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          claim: int | None = None) -> bytes:
    """A frame as RFC 6455 §5.2 lays it out (`claim` overrides the length field)."""
    length = len(payload) if claim is None else claim
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 1 << 16:
        head += bytes([bit | 126]) + length.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def client_reader(max_message: int = 1 << 20) -> FrameReader:
    return FrameReader(masked=True, max_message=max_message)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
def test_frames_of_every_length_form_pass_whole_and_end_on_a_boundary(size: int) -> None:
    data = frame(OP_BINARY, os.urandom(size)) + frame(OP_TEXT, b"next")
    reader = client_reader()
    assert reader.feed(data) == len(data)
    assert reader.at_boundary and reader.error is None and reader.close is None


def test_a_stream_split_byte_by_byte_is_followed_exactly() -> None:
    first = frame(OP_TEXT, b"x" * 300)
    data = first + frame(OP_PING, b"p") + frame(OP_BINARY, b"y" * 70_000, masked=True)
    reader = client_reader()
    boundaries = []
    for i in range(len(data)):
        assert reader.feed(data[i:i + 1]) == 1
        if reader.at_boundary:
            boundaries.append(i + 1)
    assert boundaries == [len(first), len(first) + len(frame(OP_PING, b"p")), len(data)]


def test_a_close_frame_is_read_across_reads_and_nothing_after_it_passes() -> None:
    close = frame(OP_CLOSE, (4000).to_bytes(2, "big") + "bye ✓".encode())
    data = frame(OP_TEXT, b"hi") + close + frame(OP_TEXT, b"after")
    reader = client_reader()
    passed = 0
    for i in range(0, len(data), 3):          # split in threes: the close payload arrives in pieces
        n = reader.feed(data[i:i + 3])
        passed += n
        if reader.close is not None:
            break
    assert reader.close == (4000, "bye ✓")
    assert passed == len(frame(OP_TEXT, b"hi")) + len(close)


def test_a_close_without_a_code_reports_none() -> None:
    reader = FrameReader(masked=False, max_message=100)
    assert reader.feed(frame(OP_CLOSE, masked=False)) == 2
    assert reader.close == (None, "")


def test_stop_at_boundary_stops_after_the_current_frame() -> None:
    big = frame(OP_BINARY, b"z" * 1000)
    reader = client_reader()
    assert reader.feed(big[:500]) == 500       # mid-frame: a CLOSE of ours cannot go in here
    assert not reader.at_boundary
    reader.stop_at_boundary = True
    rest = big[500:] + frame(OP_TEXT, b"more")
    assert reader.feed(rest) == len(big) - 500
    assert reader.at_boundary


_OPEN_TEXT = frame(OP_TEXT, b"a" * 600, fin=False)


@pytest.mark.parametrize(("before", "bad", "code", "reason"), [
    (b"", frame(OP_TEXT, b"x", rsv=4), PROTOCOL_ERROR, "reserved bits set"),
    (b"", frame(OP_TEXT, b"x", masked=False), PROTOCOL_ERROR, "unmasked frame"),
    (b"", frame(0x3, b"x"), PROTOCOL_ERROR, "unknown opcode"),
    (b"", frame(OP_PING, b"x" * 126), PROTOCOL_ERROR, "invalid control frame"),
    (b"", frame(OP_PING, b"x", fin=False), PROTOCOL_ERROR, "invalid control frame"),
    (b"", frame(OP_CONTINUATION, b"x"), PROTOCOL_ERROR, "continuation outside a message"),
    (_OPEN_TEXT, frame(OP_TEXT, b"b"), PROTOCOL_ERROR, "new message inside a fragmented one"),
    (b"", frame(OP_BINARY, claim=1 << 40), MESSAGE_TOO_BIG, "message too big"),
    (_OPEN_TEXT, frame(OP_CONTINUATION, b"b" * 600), MESSAGE_TOO_BIG, "message too big"),
])
def test_protocol_errors_stop_right_before_the_offending_frame(before: bytes, bad: bytes, code: int,
                                                                reason: str) -> None:
    good = frame(OP_TEXT, b"fine") + before
    reader = client_reader(max_message=1000)
    assert reader.feed(good + bad + frame(OP_TEXT, b"never")) == len(good)
    assert reader.error is not None and (reader.error.code, reader.error.reason) == (code, reason)
    assert reader.at_boundary                    # the relay may still append a CLOSE of its own


def test_fragments_and_interleaved_control_frames_are_fine() -> None:
    data = (frame(OP_TEXT, b"a" * 400, fin=False) + frame(OP_PING, b"!")
            + frame(OP_CONTINUATION, b"b" * 400, fin=False) + frame(OP_CONTINUATION, b"c" * 100))
    reader = client_reader(max_message=1000)
    assert reader.feed(data) == len(data) and reader.error is None


def test_an_error_in_a_header_begun_earlier_is_not_a_boundary() -> None:
    bad = frame(OP_TEXT, b"x", masked=False)    # wrong masking, header split over two reads
    reader = client_reader()
    assert reader.feed(bad[:1]) == 1             # already passed on: the peer holds half a header
    assert reader.feed(bad[1:]) == 0
    assert reader.error is not None
    assert not reader.at_boundary                # so the relay must abort, not append a CLOSE


@pytest.mark.parametrize("masked", [True, False])
def test_close_frame_reads_back_and_keeps_reasons_within_a_control_frame(masked: bool) -> None:
    reason = "é" * 100                          # 200 bytes: cut to 122 (whole characters), 124 in all
    data = close_frame(4001, reason, masked=masked)
    reader = FrameReader(masked=masked, max_message=10)
    assert reader.feed(data) == len(data)
    assert reader.close == (4001, "é" * 61)
    assert len(data) - (6 if masked else 2) <= 125


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
def test_a_watched_text_is_found_in_masked_fragments_split_anywhere(step: int) -> None:
    """`watch` (a UI's sign-out message, logout.ws_text_contains): found in a text message whose
    fragments, masks and interleaved pings come in reads of any size; never in a binary message, nor
    across two messages; every byte still passes."""
    seen: list[int] = []
    reader = client_reader()
    reader.watch = b'"type":"logout"'
    reader.on_watch = lambda: seen.append(1)
    stream = (frame(OP_BINARY, b'{"type":"logout"}')
              + frame(OP_TEXT, b'{"type":"lo', fin=False)
              + frame(OP_PING, b"p") + frame(OP_CONTINUATION, b'gout"}')
              + frame(OP_TEXT, b'xx"type":"lo') + frame(OP_TEXT, b'gout"'))
    passed = 0
    for i in range(0, len(stream), step):
        chunk = stream[i:i + step]
        passed += reader.feed(chunk)
        assert reader.error is None
    assert passed == len(stream) and reader.at_boundary
    assert seen == [1]
