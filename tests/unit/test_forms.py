"""Form bodies and the credential's field names (proxy/forms.py): every chunking gives the same result.

A body reaches authproxy in pieces of any size; a field name or a multipart delimiter may be cut
anywhere. Each case is fed whole and in pieces of 1, 2, 3, 7 and 64 bytes.
"""

from __future__ import annotations

import pytest

from authproxy.proxy.forms import (
    MultipartCheck,
    Refused,
    UrlencodedFilter,
    boundary,
    form_kind,
    require_ascii_based,
)
from authproxy.upstreams.query import FieldNames

TOKEN = FieldNames(["token"])
SIZES = (1, 2, 3, 7, 64, 1 << 20)


def filtered(body: bytes, names: FieldNames = TOKEN) -> bytes:
    results = set()
    for size in SIZES:
        f = UrlencodedFilter(names)
        out = b"".join(f.feed(body[i:i + size]) for i in range(0, len(body), size)) + f.flush()
        results.add(out)
    assert len(results) == 1, results
    return results.pop()


@pytest.mark.parametrize(("body", "expected"), [
    (b"a=1&token=x&b=2", b"a=1&b=2"),
    (b"token=x", b""),
    (b"token", b""),
    (b"token=x&a=1", b"a=1"),
    (b"a=1&token=", b"a=1"),
    (b"TOKEN=1&%74oken=2&to%6Ben&ToKeN=3&x=%74oken", b"x=%74oken"),
    (b"+token+=1&%20token=2&k=2", b"k=2"),                      # whitespace around the name
    (b"to%E2%84%AAen=1&k=2", b"k=2"),                          # Kelvin sign: lower-cases to `k`
    (b"a=1&&b&", b"a=1&&b&"),                                  # empty fields kept byte for byte
    (b"&a", b"&a"),
    (b"", b""),
    (b"tokens=1&my_token=2&token[]=3&x=token", b"tokens=1&my_token=2&token[]=3&x=token"),
    (b"caf\xe9=\xe9t\xe9&n=%C5%81ukasz+%E2%9C%93", b"caf\xe9=\xe9t\xe9&n=%C5%81ukasz+%E2%9C%93"),
])
def test_urlencoded_fields_naming_the_credential_are_cut_the_rest_kept(body: bytes, expected: bytes) -> None:
    assert filtered(body) == expected


def test_a_credential_field_after_a_long_value_or_a_long_name_is_still_cut() -> None:
    long_value = b"x=" + b"y" * 5000
    assert filtered(long_value + b"&token=1&z") == long_value + b"&z"
    long_name = b"a" * 3000 + b"token"   # too long to spell `token`: passed on as soon as that is clear
    assert filtered(long_name + b"=1&token=2") == long_name + b"=1"


def test_field_names_read_every_way_a_parser_may() -> None:
    sid = FieldNames(["sid", "X-Session"])
    for spelled in (
        "sid",
        "SID",
        "%73id",
        "s%49d",
        "s%C4%B1d",
        "s\xc4\xb1d",
        "\u017fid",
        " sid",
        "sid+",
        "\tsid",
        "x-session",
        "X%2DSESSION",
    ):
        assert spelled in sid, spelled
    for other in ("sids", "s_id", "id", "", "s%2569d", "xsession"):
        assert other not in sid, other
    assert not FieldNames([]) and "token" not in FieldNames([])


def checked(body: bytes, mark: bytes = b"XyZ") -> str:
    outcomes = set()
    for size in SIZES:
        check = MultipartCheck(mark, TOKEN)
        try:
            out = b"".join(check.feed(body[i:i + size]) for i in range(0, len(body), size)) + check.flush()
        except Refused as exc:
            outcomes.add(exc.code)
            continue
        assert out == body   # passed on byte for byte
        outcomes.add("ok")
    assert len(outcomes) == 1, outcomes
    return outcomes.pop()


def part(headers: str, content: bytes = b"x") -> bytes:
    return b"--XyZ\r\n" + headers.encode("latin-1") + b"\r\n\r\n" + content + b"\r\n"


CLOSE = b"--XyZ--\r\n"


def test_a_multipart_body_without_a_credential_field_passes_unchanged() -> None:
    upload = bytes(range(256)) * 64 + b"--XyY --Xy\r\n--xyz"
    body = (
        part('Content-Disposition: form-data; name="zone"', b"example.com")
        + part(
            'Content-Disposition: form-data; name="file"; filename="token"\r\nContent-Type: text/plain',
            upload,
        )
        + part('Content-Disposition: form-data; name="tokens"')
        + CLOSE
    )
    assert checked(body) == "ok"


@pytest.mark.parametrize("head", [
    'Content-Disposition: form-data; name="token"',
    "content-disposition:form-data;NAME=ToKeN",
    "Content-Disposition: form-data; name*=UTF-8''%74oken",
    'Content-Disposition: form-data; name*0="to"; name*1="ken"',
    'Content-Disposition: form-data; name="tok\\en"',
    'Content-Disposition: form-data;\r\n name="token"',                 # folded
    'Content-Type: text/plain\r\nContent-Disposition: form-data; name=" token "',
    'Content-Disposition: form-data; filename="a"; name="token"; x="y"',
    'Content-Disposition: form-data; name="token"; filename="upload.bin"',
    # RFC 2047 encoded-words, which ASP.NET Core decodes in a part's name
    'Content-Disposition: form-data; name="=?utf-8?q?token?="',
    "Content-Disposition: form-data; name==?UTF-8?Q?t=6Fken?=",
    'Content-Disposition: form-data; name="=?utf-8?b?dG9rZW4=?="',
    'Content-Disposition: form-data; name="=?utf-8?B?dG9rZW4?="',              # unpadded
    'Content-Disposition: form-data; name="=?utf-8?q?to?= =?utf-8?q?ken?="',  # two words, one name
    'Content-Disposition: form-data; name="=?iso-8859-1*en?q?token?="',       # RFC 2231 language
    # RFC 2231 in the declared charset
    "Content-Disposition: form-data; name*=utf-8''token",
    "Content-Disposition: form-data; name*=utf-16le''t%00o%00k%00e%00n%00",
    "Content-Disposition: form-data; name*=UTF-16''%FF%FEt%00o%00k%00e%00n%00",
    "Content-Disposition: form-data; name*0*=utf-16le''t%00o%00; name*1*=k%00e%00n%00",   # continued
    "Content-Disposition: form-data; name*0*=utf-8''to; name*1=\"ken\"",
])
def test_a_part_named_like_the_credential_is_refused(head: str) -> None:
    assert (
        checked(part('Content-Disposition: form-data; name="a"') + part(head) + CLOSE) == "credential_field"
    )


@pytest.mark.parametrize(
    "body",
    [
        b'--XyZ\nContent-Disposition: form-data; name="token"\n\nx\n--XyZ--\n',  # bare LF lines
        (
            b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\n1--XyZ\r\n'  # mid-line
            b"Content-Disposition: form-data; name=token\r\n\r\nx\r\n--XyZ--\r\n"
        ),
        CLOSE + part("Content-Disposition: form-data; name=token"),  # after the close
        b'--XyZ\r\nContent-Disposition: form-data; name="token"',  # cut off at the end
    ],
)
def test_every_place_a_lenient_parser_could_find_a_part_is_checked(body: bytes) -> None:
    assert checked(body) == "credential_field"


@pytest.mark.parametrize("head", [
    'Content-Disposition: form-data; name="=?x-no-such-charset?q?token?="',
    "Content-Disposition: form-data; name*=x-no-such-charset''token",
])
def test_a_part_name_in_a_charset_nobody_here_can_read_is_refused(head: str) -> None:
    assert checked(part(head) + CLOSE) == "bad_multipart"


def test_encoded_part_names_that_are_not_the_credential_pass() -> None:
    body = (part('Content-Disposition: form-data; name="=?utf-8?q?tokens?="')
            + part("Content-Disposition: form-data; name*=utf-8''caf%C3%A9") + CLOSE)
    assert checked(body) == "ok"


@pytest.mark.parametrize("value", [
    "application/x-www-form-urlencoded; charset=utf-16",
    "application/x-www-form-urlencoded; charset=UTF-16LE",
    "application/x-www-form-urlencoded; charset=utf-32",
    'application/x-www-form-urlencoded; charset="utf-16be"',
    "application/x-www-form-urlencoded; charset=x-no-such-charset",
    "application/x-www-form-urlencoded; charset=utf-8; charset=utf-16",
    "application/x-www-form-urlencoded; charset*=utf-16''",
])
def test_an_urlencoded_form_in_a_charset_that_is_not_ascii_based_is_refused(value: str) -> None:
    with pytest.raises(Refused) as refused:
        require_ascii_based(value)
    assert (refused.value.status, refused.value.code) == (400, "unsupported_charset")


@pytest.mark.parametrize("value", [
    "application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=UTF-8",
    "application/x-www-form-urlencoded; charset=utf8", "application/x-www-form-urlencoded; charset=us-ascii",
    'application/x-www-form-urlencoded; charset="ISO-8859-1"',
])
def test_ascii_based_charsets_are_filtered_as_ever(value: str) -> None:
    require_ascii_based(value)


def test_overlong_part_headers_are_refused_however_they_arrive() -> None:
    assert checked(part("X-Padding: " + "a" * 20000 + "\r\nContent-Disposition: form-data; name=a")) \
        == "bad_multipart"


@pytest.mark.parametrize(("value", "expected"), [
    ("multipart/form-data; boundary=XyZ", b"XyZ"),
    ('multipart/form-data; charset=utf-8; boundary="a b:c"', b"a b:c"),
    ("multipart/form-data;boundary=----WebKitFormBoundary7MA4YWxk", b"----WebKitFormBoundary7MA4YWxk"),
])
def test_boundaries(value: str, expected: bytes) -> None:
    assert boundary(value) == expected


@pytest.mark.parametrize("value", [
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=a,b",
    "multipart/form-data; boundary=a; Boundary=b", 'multipart/form-data; boundary="a\\"b"',
    'multipart/form-data; boundary="unterminated', "multipart/form-data; boundary=" + "a" * 300,
])
def test_boundaries_parsers_could_disagree_on_are_refused(value: str) -> None:
    with pytest.raises(Refused) as refused:
        boundary(value)
    assert refused.value.status == 400


def test_form_kinds_as_the_most_lenient_parser_reads_them() -> None:
    assert form_kind(["application/x-www-form-urlencoded; charset=UTF-8"]) == "urlencoded"
    assert form_kind(["Application/X-WWW-Form-Urlencoded, text/plain"]) == "urlencoded"
    assert form_kind(["multipart/form-data; boundary=x"]) == "multipart"
    assert form_kind(["multipart/mixed; boundary=x"]) == "multipart"
    assert form_kind(["application/json"]) is None and form_kind([]) is None
    with pytest.raises(Refused):
        form_kind(["text/plain", "application/x-www-form-urlencoded"])
