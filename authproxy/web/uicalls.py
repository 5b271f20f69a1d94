"""A UI's own sign-in, sign-out and session calls, answered as its adapter declares (upstreams/ui.py).

A UI behind authproxy still runs its own sign-in page and sign-out button. The proxy asks `answer`
before it forwards a request; the adapter says which call it is (`ui_call`) and how the product words
each outcome (`ui_words`), and this module does the work with the JSON API's own code (web/api.py:
`sign_in`, `end_session`, the session cookie), so signing in and out have one implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from authproxy import crosssite, keys
from authproxy.errors import AuthError, UpstreamError
from authproxy.login.passthrough import LoginInput
from authproxy.routing import Site
from authproxy.sessions.manager import LoadedSession
from authproxy.upstreams.ui import HANDOFF_FLAG, NO_STORE, SAFE_METHODS, Outcome, UiAnswer, UiCall
from authproxy.web.api import clear_session_cookie, end_session, login_location, set_session_cookie, sign_in
from authproxy.web.common import SECURITY_HEADERS, client_ip, current_session, json_error, wants_html


def reply(answer: UiAnswer) -> web.Response:
    """The product's answer, as declared."""
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


async def answer(request: web.Request, site: Site) -> web.StreamResponse | None:
    """The answer to one of the UI's own sign-in calls, or None: forward the request."""
    adapter = site.adapter
    refusal = adapter.ui_foreign_writes
    if refusal is not None and request.method not in SAFE_METHODS and crosssite.from_other_site(request):
        return reply(refusal)
    call = adapter.ui_call(request.method, site.upstream_path(request.rel_url.raw_path))
    if call is None:
        return None
    return await _CALLS[call](request, site)


def _refused(request: web.Request, site: Site) -> bool:
    """Another site's page is behind this sign-in or sign-out call; or, on an API whose GETs change
    state (Technitium's: these calls take GETs too), the proxy's cross-site rule refuses it: a page
    load of it that nothing shows came from this site (a link from outside the browser, or from a
    `no-referrer` page in a browser without Fetch Metadata)."""
    if crosssite.from_other_site(request):
        return True
    path = site.upstream_path(request.rel_url.raw_path)
    return crosssite.request_refused(request, path, site.adapter.gets_change_state) is not None


def _words(site: Site, call: UiCall, outcome: Outcome, message: str = "") -> web.Response | None:
    said = site.adapter.ui_words(call, outcome, message)
    return reply(said) if said is not None else None


async def _sign_in(request: web.Request, site: Site) -> web.StreamResponse:
    """The UI's login form (and Technitium's admin/admin auto-try), run through authproxy's own sign-in
    (throttling, audit, new session id) and answered in the product's words."""
    if not request.app[keys.CONFIG].session_mode:
        return await _session_answer(request, site, None)
    if not request.secure:
        return _said(site, "failed", "Sign-in needs HTTPS; open this page over https://.")
    if _refused(request, site):  # login CSRF: a form or link elsewhere signs you in as someone else
        return _said(site, "refused", "Cross-site sign-in refused.")
    form: list[tuple[str, str]] = []
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            posted = await request.post()  # bounded by the app's client_max_size
        except (ValueError, LookupError):  # a multipart body without its boundary, bytes not in the charset,
            # an unknown charset: aiohttp raises these as they are (a 500), they are the client's mistake
            return _said(site, "failed", "The form could not be read.")
        form = [(name, value) for name, value in posted.items() if isinstance(value, str)]
    try:
        fields = LoginInput.parse(site.adapter.ui_login_fields(list(request.query.items()), form))
        loaded, cookie = await sign_in(request, site, fields)
    except AuthError as exc:
        outcome: Outcome = "totp_required" if exc.code == "totp_required" else "failed"
        return _said(site, outcome, str(exc))
    except UpstreamError:
        return _said(site, "failed", f"{site.name} is not answering right now; try again in a moment.")
    if site.adapter.ui_handoff is not None:
        loaded.session.credentials[site.name].extra[HANDOFF_FLAG] = (
            True  # this answer carries the placeholder
        )
        await request.app[keys.SESSIONS].save(loaded)
    response = await _session_answer(request, site, loaded)
    set_session_cookie(request, response, cookie)
    return response


def _said(site: Site, outcome: Outcome, message: str) -> web.StreamResponse:
    """A sign-in outcome in the product's words, or authproxy's JSON error."""
    said = _words(site, "sign_in", outcome, message)
    return said if said is not None else json_error(403 if outcome == "refused" else 401, outcome, message)


async def _session_answer(
    request: web.Request, site: Site, loaded: LoadedSession | None
) -> web.StreamResponse:
    said = await site.adapter.ui_session(loaded, client_ip(request))
    return reply(said) if said is not None else web.Response(status=204, headers=SECURITY_HEADERS)


async def _signed_in(request: web.Request, site: Site) -> web.StreamResponse | None:
    """The UI's login call while the person is signed in: answered here, so the login API never sees
    a signed-in person's request. Without a session it goes upstream."""
    if not request.app[keys.CONFIG].session_mode:
        return None
    loaded = await current_session(request)
    credential = loaded.session.credentials.get(site.name) if loaded is not None else None
    if loaded is None or credential is None:
        return None
    alive = await site.adapter.ui_alive(credential)
    if not alive:
        await request.app[keys.SESSIONS].drop_credential(loaded, site.name, client_ip=client_ip(request))
    said = _words(site, "signed_in", "ok")
    if said is not None:
        return said
    if wants_html(request) and request.method not in SAFE_METHODS:
        # The product's own sign-in form, posted by a browser: the UI believes its session is over (a
        # logout authproxy did not see). A way back, never a dead end: authproxy's sign-in page.
        location = login_location(request, site.config.path_prefix) + ("" if alive else "&expired=1")
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})
    prefix = request.app[keys.CONFIG].server.prefix
    return web.json_response({"error": "sign_in_at_authproxy", "message": "You are signed in already; "
                              f"to sign in as someone else, sign out and use {prefix}/login."},
                             status=403, headers={"Cache-Control": "no-store"})


async def _sign_out(request: web.Request, site: Site) -> web.StreamResponse:
    """End the authproxy session (and every upstream session it holds) for a UI's logout call.

    A browser navigation gets a redirect to authproxy's sign-in page; a script gets the product's
    words, or `ui_signed_out_status`."""
    session_mode = request.app[keys.CONFIG].session_mode
    loaded = await current_session(request) if session_mode else None
    if loaded is None:
        early = _words(site, "sign_out", "no_session" if session_mode else "ok")
        if early is not None:
            return early
    if _refused(request, site):  # a link on another site must not sign anyone out (GET logouts)
        refused = _words(site, "sign_out", "refused", "Cross-site sign-out refused.")
        return refused or web.json_response(
            {"error": "cross_site", "message": "Cross-site sign-out refused."},
            status=403,
            headers={"Cache-Control": "no-store"},
        )
    if loaded is not None:
        await end_session(request, loaded, reason="ui_logout")
    response: web.StreamResponse
    said = _words(site, "sign_out", "ok")
    status = site.adapter.ui_signed_out_status
    if said is not None:
        response = said
    elif request.method in ("GET", "HEAD") and wants_html(request):
        prefix = request.app[keys.CONFIG].server.prefix
        response = web.Response(status=302, headers={**SECURITY_HEADERS,
                                                     "Location": f"{prefix}/login?logged_out=1"})
    elif status == 204:
        response = web.Response(status=204, headers=SECURITY_HEADERS)
    else:
        response = web.Response(status=status, text="", content_type="text/plain", headers=SECURITY_HEADERS)
    if session_mode:
        clear_session_cookie(request, response)
    return response


async def _session(request: web.Request, site: Site) -> web.StreamResponse | None:
    """The UI's session call: forwarded (and rewritten) with a session; otherwise the product's answer."""
    if not request.app[keys.CONFIG].session_mode:
        return await _session_answer(request, site, None)
    loaded = await current_session(request)
    if loaded is None or site.name not in loaded.session.credentials:
        return _words(site, "session", "no_session")
    return None


async def _entry(request: web.Request, site: Site) -> web.StreamResponse | None:
    """After a portal sign-in the UI has no token and would try admin/admin: once per credential, the
    page load gets a short-lived cookie holding the placeholder, as Technitium's SSO does."""
    handoff = site.adapter.ui_handoff
    if handoff is None or not crosssite.navigation(request.method, request.headers):
        return None
    try:
        has_handoff = handoff.cookie in request.cookies
    except Exception:  # noqa: BLE001 - a malformed Cookie header: no handoff, never a 500
        return None
    if not request.app[keys.CONFIG].session_mode or has_handoff:
        return None
    loaded = await current_session(request)
    credential = loaded.session.credentials.get(site.name) if loaded is not None else None
    if loaded is None or credential is None or credential.extra.get(HANDOFF_FLAG):
        return None
    placeholder = site.adapter.placeholder(loaded)
    if placeholder is None:
        return None
    credential.extra[HANDOFF_FLAG] = True  # once: a browser refusing the cookie cannot loop
    await request.app[keys.SESSIONS].save(loaded)
    response = web.Response(status=302, headers={**NO_STORE, "Location": str(request.rel_url)})
    response.set_cookie(handoff.cookie, placeholder, max_age=handoff.max_age, path=site.config.path_prefix,
                        secure=request.secure, httponly=False, samesite="Lax")
    return response


_CALLS: dict[UiCall, Callable[[web.Request, Site], Awaitable[web.StreamResponse | None]]] = {
    "sign_in": _sign_in, "signed_in": _signed_in, "sign_out": _sign_out, "session": _session, "entry": _entry}
