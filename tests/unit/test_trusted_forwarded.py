"""`amend`: the request answers as `request.clone(scheme=, host=, remote=)` would, without the copy."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request

from authproxy.web.middleware import amend


def test_amend_answers_like_clone_even_for_values_already_computed() -> None:
    request = make_mocked_request("GET", "/p?q=1", headers={"Host": "internal:8080"})
    assert (request.scheme, request.host, str(request.url)) == ("http", "internal:8080", "http://internal:8080/p?q=1")
    cloned = request.clone(scheme="https", host="public.example", remote="203.0.113.9")

    assert amend(request, scheme="https", host="public.example", remote="203.0.113.9") is request
    for name in ("scheme", "host", "remote", "secure", "url", "path_qs"):
        assert getattr(request, name) == getattr(cloned, name), name
    assert str(request.url) == "https://public.example/p?q=1" and request.secure


def test_amend_leaves_what_it_is_not_given() -> None:
    request = make_mocked_request("GET", "/", headers={"Host": "internal:8080"})
    amend(request, scheme="https")
    assert (request.scheme, request.host) == ("https", "internal:8080")
