"""StreamReplacer: a secret replaced in a body that arrives in pieces, exactly as a whole-body replace."""

from __future__ import annotations

import random

import pytest

from authproxy.upstreams.substitute import StreamReplacer, scrubber, url_spellings


def run(replacer: StreamReplacer, pieces: list[bytes]) -> bytes:
    return b"".join(replacer.feed(p) for p in pieces) + replacer.flush()


def test_a_secret_split_across_every_possible_boundary_is_replaced() -> None:
    secret, placeholder = "0123456789abcdef" * 4, "f" * 64
    body = b'{"a":"' + secret.encode() + b'","b":"x' + secret.encode() + b'"}'
    for cut in range(len(body) + 1):
        for second in range(cut, len(body) + 1):
            out = run(StreamReplacer(secret, placeholder), [body[:cut], body[cut:second], body[second:]])
            assert out == body.replace(secret.encode(), placeholder.encode())


def test_only_a_tail_that_could_grow_into_the_secret_is_held_back() -> None:
    r = StreamReplacer("SECRET", "******")
    assert r.keeps_length
    assert r.feed(b"xxSEC") == b"xx"            # "SEC" could grow into the secret: it waits
    assert r.feed(b"RET yy") == b"****** yy"    # ...it did; what cannot grow into it goes out at once
    assert r.feed(b"zzSE") == b"zz"
    assert r.feed(b"X") == b"SEX"               # that prefix stopped being one
    assert r.feed(b'data: {"n":1}\n\n') == b'data: {"n":1}\n\n'   # an SSE event is not held back
    assert r.flush() == b""
    assert not StreamReplacer("SECRET", "").keeps_length


def test_same_as_bytes_replace_on_random_bodies_pieces_and_overlapping_secrets() -> None:
    rnd = random.Random(20261129)
    for _ in range(5000):
        secret = "".join(rnd.choice("ab") for _ in range(rnd.randint(1, 6)))   # "aba": self-overlapping
        replacement = "".join(rnd.choice("XY") for _ in range(rnd.randint(0, 7)))
        body = "".join(rnd.choice("ab") for _ in range(rnd.randint(0, 60))).encode()
        pieces, i = [], 0
        while i < len(body):
            n = rnd.randint(0, 8)
            pieces.append(body[i:i + n])
            i += n
        assert run(StreamReplacer(secret, replacement), pieces) == body.replace(secret.encode(),
                                                                                  replacement.encode())


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamReplacer("", "x")


def test_a_secret_is_found_in_every_url_spelling_across_pieces() -> None:
    secret = "Zm9v+YmFy/c2lk=="
    assert url_spellings(secret) == [
        secret,
        "Zm9v%2BYmFy%2Fc2lk%3D%3D",
        "Zm9v%2bYmFy%2fc2lk%3d%3d",
        "Zm9v%2BYmFy/c2lk%3D%3D",
        "Zm9v%2bYmFy/c2lk%3d%3d",
        "Zm9v+YmFy\\/c2lk==",
        "Zm9v\\u002BYmFy/c2lk==",
        "Zm9v\\u002BYmFy\\/c2lk==",
    ]
    assert url_spellings("a1" * 32) == ["a1" * 32]       # hex: one replacer, no chain
    assert isinstance(scrubber("a1" * 32, "b2" * 32), StreamReplacer)
    body = ("<a href='/x?sid=" + "'>a</a> <a href='/x?sid=".join(url_spellings(secret)) + "'>b</a>").encode()
    for size in (1, 3, 7, 64):
        chain = scrubber(secret, "")
        out = b"".join(chain.feed(body[i:i + size]) for i in range(0, len(body), size)) + chain.flush()
        assert out == b"<a href='/x?sid=" + b"'>a</a> <a href='/x?sid=".join([b""] * 8) + b"'>b</a>", size
        assert not chain.keeps_length
        filled = scrubber(secret, "0" * len(secret))
        out = b"".join(filled.feed(body[i:i + size]) for i in range(0, len(body), size)) + filled.flush()
        assert filled.keeps_length and len(out) == len(body) and secret.encode() not in out
