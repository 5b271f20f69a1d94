"""Request bodies that could name the upstream credential: urlencoded forms filtered, multipart checked.

Which field names carry the credential is the adapter's word (`credential_fields()`: Technitium's
`token`, a generic site's `hide.params` and query-injected name). Nothing the client sends may name
one, whatever the body's size, so both form encodings an upstream reads are handled at any size,
with bounded memory:

* urlencoded (`a=1&token=x&b=2`): every field whose name reads as a credential name (FieldNames:
  any decoding and case) is removed; every other byte goes on as sent. Bodies up to MAX_WHOLE are
  read whole and go on with their new Content-Length (some upstreams take no chunked uploads);
  longer ones are filtered as they stream, `&` to `&`, holding at most a field's name (beyond
  NAME_LIMIT raw characters no credential name fits), and go on chunked since their length changes.
* multipart: *refused* (400) when any part is named like the credential, never rewritten. Filtering
  parts would change the body's length, so every upload would go on chunked (which some upstreams
  refuse), and re-framing parts is a second multipart writer whose output the upstream parses anew;
  a check that only reads leaves the bytes and the Content-Length as sent. Nothing legitimate is
  lost: UIs send the credential as a header or in the query, never as a multipart field. The check
  is deliberately wider than any parser: it reads the header block after *every* `--boundary`
  (mid-line too, CRLF or LF line ends) and every `name`, `name*` and `name*N` parameter of each
  Content-Disposition in it, so any part the upstream's parser can find, this check found first.
  A body up to MAX_WHOLE is checked before a byte goes upstream; a longer one as it streams, and a
  refused one breaks the upstream request off before the offending part's first byte (the upstream
  sees a truncated body, never the field), the client getting the 400.

A compressed form (`Content-Encoding`) could hide a field: 415. A request with two Content-Types, or
a multipart one whose boundary is missing, repeated or spelt so that parsers may disagree: 400.

Charsets, as the upstream decodes them: an urlencoded body with a `charset` that is not ASCII-based
(`utf-16`: ASP.NET Core, and so Technitium, reads the form in the Content-Type's charset, where
`t\0o\0k\0e\0n\0` is `token`) is refused (400 `unsupported_charset`): no byte filter can read it. A
multipart part name is also read as RFC 2047 encoded-words (`=?utf-8?q?token?=`, `=?utf-8?b?...?=`,
which ASP.NET decodes) and as RFC 2231 `name*=charset'lang'...` in its declared charset; a charset
Python does not know there is refused (400 `bad_multipart`) rather than guessed.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import unquote_to_bytes

import aiohttp

from authproxy.bodies import read_up_to
from authproxy.upstreams.query import FieldNames

MAX_WHOLE = 1 << 20          # bodies up to this size are checked whole, before anything goes upstream
MAX_PART_HEAD = 16 * 1024    # a part's header block (ASP.NET's own limit); a longer one is refused
NAME_LIMIT = 1024            # raw characters of an urlencoded name that may still spell a credential name
CHUNK = 64 * 1024

FormKind = Literal["urlencoded", "multipart"]
_MEDIA_END = re.compile(r"[;,\s]")
# `; key = value` with a quoted (possibly unterminated) or bare value.
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)')
_TOKEN = re.compile(r"[0-9A-Za-z'+_.\-!#$%&*^`{|}~]{1,200}")
_BCHARS = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")
_CONTINUATION = re.compile(r"\*(\d{1,3})\*?")
# RFC 2047 encoded-word: =?charset(*language)?B|Q?text?=
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
# Charsets in which every ASCII character is the byte it is and no other byte sequence reads as one:
# a byte-level filter reads such a form as the upstream does.
_ASCII_BASED = frozenset({"utf-8", "ascii", "iso8859-1", "iso8859-15", "cp1252"})


class Refused(Exception):
    """The body may not go upstream: `status` and `code` for the client, `message` says what to send."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Check(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


@dataclass(slots=True)
class Checked:
    """What goes upstream. `data`: bytes, an async iterator of bytes, or the client's stream as is;
    `same_length`: the client's Content-Length still describes it; `refused`: set when a streamed body
    was broken off (the upstream request then fails, and the client gets this instead of a 502)."""

    data: object
    same_length: bool = True
    refused: Refused | None = None


def form_kind(content_types: list[str]) -> FormKind | None:
    """Which form encoding the upstream will read the body as. The media type ends at `;`, `,` or
    whitespace, as the most lenient parsers cut it (PHP reads `application/x-www-form-urlencoded,
    text/plain` as a form)."""
    if not content_types:
        return None
    if len(content_types) > 1:
        raise Refused(400, "bad_content_type", "The request has more than one Content-Type; send one.")
    media = _MEDIA_END.split(content_types[0].strip().lower(), maxsplit=1)[0]
    if media == "application/x-www-form-urlencoded":
        return "urlencoded"
    if media.startswith("multipart/"):
        return "multipart"
    return None


def boundary(content_type: str) -> bytes:
    """The multipart boundary, or Refused when parsers could disagree about it: missing, repeated,
    a bare value with characters that end a MIME token, a quoted one with escapes."""
    found = [
        str(value).strip() for key, value in _PARAM.findall(content_type) if str(key).lower() == "boundary"
    ]
    bad = Refused(
        400, "bad_multipart", "A multipart body needs one plain boundary parameter in its Content-Type."
    )
    if len(found) != 1:
        raise bad
    value = found[0]
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else ""
        if not _BCHARS.fullmatch(value):
            raise bad
    elif not _TOKEN.fullmatch(value):
        raise bad
    return value.encode("ascii")


def require_ascii_based(content_type: str) -> None:
    """Refused unless every `charset` of an urlencoded Content-Type is one the byte filter reads as
    the upstream will (none at all: UTF-8, as every parser defaults)."""
    for key, value in _PARAM.findall(content_type):
        if not str(key).lower().startswith("charset"):
            continue
        # `charset*=utf-16''` or `charset*0=`: a spelling some parser may read; not ours to guess
        name = str(value).strip().strip('"') if str(key).lower() == "charset" else "?"
        try:
            known = codecs.lookup(name).name
        except LookupError:
            known = ""
        if known not in _ASCII_BASED:
            raise Refused(400, "unsupported_charset", "A form in this charset cannot be checked; send it "
                          "as UTF-8 (application/x-www-form-urlencoded; charset=utf-8).")


async def checked_body(content: aiohttp.StreamReader, content_types: list[str], content_encoding: str,
                       names: FieldNames) -> Checked:
    """The request body as it may go upstream (see the module docstring); raises Refused for what
    is known before anything is sent."""
    kind = form_kind(content_types) if names else None
    if kind is None:
        return Checked(content)
    if content_encoding.strip().lower() not in ("", "identity"):
        raise Refused(
            415, "unsupported_media_type", "A compressed form cannot be checked; send it uncompressed."
        )
    if kind == "urlencoded":
        require_ascii_based(content_types[0])
    check: _Check = UrlencodedFilter(names) if kind == "urlencoded" else MultipartCheck(
        boundary(content_types[0]), names)
    head = await read_up_to(content, MAX_WHOLE + 1)
    if len(head) <= MAX_WHOLE:
        return Checked(check.feed(head) + check.flush(), same_length=False)
    checked = Checked(None, same_length=kind == "multipart")
    checked.data = _streamed(content, head, check, checked)
    return checked


async def _streamed(content: aiohttp.StreamReader, head: bytes, check: _Check,
                    checked: Checked) -> AsyncIterator[bytes]:
    try:
        if out := check.feed(head):
            yield out
        async for chunk in content.iter_chunked(CHUNK):
            if out := check.feed(chunk):
                yield out
        if tail := check.flush():
            yield tail
    except Refused as exc:
        checked.refused = exc
        raise


class UrlencodedFilter:
    """`a=1&token=x&b=2` -> `a=1&b=2`, chunk by chunk; fields (even empty ones) are kept byte for byte."""

    __slots__ = ("limit", "mode", "name", "names", "open", "sent")

    def __init__(self, names: FieldNames) -> None:
        self.names = names
        self.limit = max(NAME_LIMIT, 9 * names.longest + 64)   # 9: a 3-byte UTF-8 character, %-encoded
        self.name = bytearray()   # the current field's name, not yet judged
        self.mode = "name"        # name: reading it; keep: passing the value on; drop: skipping it
        self.open = False         # a field has begun (input seen since the start or the last `&`)
        self.sent = False         # a field went out: the next kept one needs its `&`

    def feed(self, chunk: bytes) -> bytes:
        out = bytearray()
        i, end = 0, len(chunk)
        while i < end:
            if self.mode != "name":
                amp = chunk.find(b"&", i)
                stop = end if amp < 0 else amp
                if self.mode == "keep":
                    out += chunk[i:stop]
                if amp < 0:
                    break
                self.mode, self.open, i = "name", True, amp + 1
                continue
            self.open = True
            eq, amp = chunk.find(b"=", i), chunk.find(b"&", i)
            stop = min(p for p in (eq, amp, end) if p >= 0)
            self.name += chunk[i:stop]
            if stop == end:
                if len(self.name) > self.limit:   # too long to spell a credential name: pass it on
                    self._emit_name(out)
                    self.mode = "keep"
                break
            kept = self._judge(out)
            if chunk[stop] == ord("="):
                self.mode = "keep" if kept else "drop"
                if kept:
                    out += b"="
            i = stop + 1   # at `&`: the field ended, the next begins (mode stays "name")
        return bytes(out)

    def flush(self) -> bytes:
        out = bytearray()
        if self.mode == "name" and self.open:
            self._judge(out)
        self.mode, self.open = "name", False
        return bytes(out)

    def _judge(self, out: bytearray) -> bool:
        """Pass the current name on unless it names the credential; True when passed."""
        if self.name.decode("latin-1") in self.names:
            self.name.clear()
            return False
        self._emit_name(out)
        return True

    def _emit_name(self, out: bytearray) -> None:
        if self.sent:
            out += b"&"
        out += self.name
        self.name.clear()
        self.sent = True


class MultipartCheck:
    """Passes a multipart body on unchanged; raises Refused at a part named like the credential."""

    __slots__ = ("delimiter", "held", "in_head", "names")

    def __init__(self, boundary: bytes, names: FieldNames) -> None:
        self.delimiter = b"--" + boundary
        self.names = names
        self.held = bytearray()   # not passed on yet: a delimiter's possible start, or a header block
        self.in_head = False      # `held` starts with a delimiter whose header block is still incomplete

    def feed(self, chunk: bytes) -> bytes:
        held, size = self.held, len(self.delimiter)
        held += chunk
        out = bytearray()
        while True:
            if self.in_head:
                end = _blank_line_end(held, size)
                if (len(held) if end < 0 else end) > size + MAX_PART_HEAD:
                    raise Refused(400, "bad_multipart", "A multipart part's headers are too long.")
                if end < 0:
                    break
                self._check(held[size:end])
                out += held[:end]
                del held[:end]
                self.in_head = False
                continue
            at = held.find(self.delimiter)
            if at < 0:
                cut = len(held) - (size - 1)   # the tail may be the start of a delimiter
                if cut > 0:
                    out += held[:cut]
                    del held[:cut]
                break
            out += held[:at]
            del held[:at]
            # Even after the close delimiter (`--boundary--`): a strict parser stops there, a lenient
            # one may read on. Clients write no epilogue, so checking one costs nothing.
            self.in_head = True
        return bytes(out)

    def flush(self) -> bytes:
        if self.in_head:   # a header block cut off by the end: what a lenient parser would still read
            self._check(self.held[len(self.delimiter):])
        out = bytes(self.held)
        self.held.clear()
        self.in_head = False
        return out

    def _check(self, head: bytes | bytearray) -> None:
        for name in _disposition_names(head.decode("latin-1")):
            if name in self.names:
                raise Refused(400, "credential_field", "A multipart form field is named like the upstream "
                              "credential; authproxy adds the credential itself, so leave that field out.")


def _blank_line_end(buf: bytearray, start: int) -> int:
    """Where the first empty line after `start` ends (CRLF or bare LF line ends), or -1."""
    ends = [pos + len(mark) for mark in (b"\n\r\n", b"\n\n") if (pos := buf.find(mark, start)) >= 0]
    return min(ends) if ends else -1


def _disposition_names(head: str) -> list[str]:
    """Every spelling of a form-field name the Content-Disposition headers of a part's header block
    may give: quoted or bare, with or without backslash escapes, RFC 5987 `name*=utf-8''...`, RFC 2231
    `name*0=...; name*1=...` joined, and a naive split on `;` as the simplest parsers do it."""
    lines: list[str] = []
    for line in re.split(r"\r?\n", head):
        if line[:1] in (" ", "\t") and lines:
            lines[-1] += " " + line.strip()   # an obsolete folded continuation
        else:
            lines.append(line)
    found: list[str] = []
    for line in lines:
        field, sep, value = line.partition(":")
        if not sep or field.strip().lower() != "content-disposition":
            continue
        pieces: dict[int, str] = {}
        raw_pieces: dict[int, tuple[str, bool]] = {}
        for key, raw in _PARAM.findall(";" + value):
            key = key.lower()
            if key == "name" or key.startswith("name*"):
                spellings = _param_spellings(raw, extended=key.endswith("*"))
                found.extend(spellings)
                if piece := _CONTINUATION.fullmatch(key[4:]):
                    pieces[int(piece.group(1))] = spellings[-1]
                    raw_pieces[int(piece.group(1))] = (_unquoted(raw), key.endswith("*"))
        if pieces:
            found.append("".join(pieces[i] for i in sorted(pieces)))
        if any(extended for _, extended in raw_pieces.values()):
            found.append(_joined_extended([raw_pieces[i] for i in sorted(raw_pieces)]))
        for item in value.split(";"):
            key, eq, raw = item.partition("=")
            if eq and key.strip().lower().startswith("name"):
                found.append(raw.strip().strip('"'))
    return found


def _param_spellings(raw: str, *, extended: bool) -> list[str]:
    value = raw.strip()
    out = [value]
    if value.startswith('"'):
        inner = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        out += [inner, re.sub(r"\\(.)", r"\1", inner)]
    if extended:   # charset'language'percent-encoded
        parts = out[-1].split("'", 2)
        if len(parts) == 3:
            out.append(parts[2])
            if parts[0]:
                out.append(_decoded(unquote_to_bytes(parts[2]), parts[0]))
    words = [_encoded_words(text) for text in out if "=?" in text]
    return out + [w for w in words if w is not None]


def _unquoted(raw: str) -> str:
    value = raw.strip()
    if value.startswith('"'):
        inner = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        return re.sub(r"\\(.)", r"\1", inner)
    return value


def _joined_extended(pieces: list[tuple[str, bool]]) -> str:
    """RFC 2231 continuations (`name*0*=utf-16le''t%00o%00; name*1*=k%00...`) as a parser reads them:
    the percent-encoded pieces joined as bytes, then decoded in the first piece's charset as a whole."""
    text, extended = pieces[0]
    charset = "utf-8"
    if extended and len(parts := text.split("'", 2)) == 3:
        charset, text = parts[0] or "utf-8", parts[2]
    data = b"".join(unquote_to_bytes(t) if e else t.encode("latin-1", "replace")
                    for t, e in [(text, extended), *pieces[1:]])
    return _decoded(data, charset)


def _decoded(data: bytes, charset: str) -> str:
    """`data` in `charset`, as the upstream would read it; Refused for a charset Python does not know."""
    try:
        return data.decode(charset, "replace")
    except LookupError:
        raise Refused(400, "bad_multipart", "A multipart part name is in a charset authproxy cannot read; "
                      "send field names in UTF-8.") from None


def _encoded_words(text: str) -> str | None:
    """An RFC 2047 reading of `text` (`=?utf-8?q?token?=`): each encoded-word decoded, the blanks
    between two of them dropped; None when there is none."""
    pieces: list[str] = []
    last = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[last:match.start()]
        if not (pieces and not between.strip()):
            pieces.append(between)
        charset, kind, payload = match.groups()
        if kind in "bB":
            try:
                data = base64.b64decode(payload + "=" * (-len(payload) % 4))
            except (binascii.Error, ValueError):
                data = payload.encode("latin-1", "replace")
        else:
            data = unquote_to_bytes(payload.replace("_", " ").replace("=", "%"))
        pieces.append(_decoded(data, charset))
        last = match.end()
    if not last:
        return None
    return "".join(pieces) + text[last:]
