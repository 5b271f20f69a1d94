"""The admin page of local accounts (`/_authproxy/admin`): users, roles, keys and sessions, on the same
JSON API a script uses. Plain HTML with labelled forms and captioned tables, one same-origin script
(static/admin.js) that renders with textContent only, no inline script or style: the portal's strict
Content-Security-Policy. Not signed in: the sign-in page, then back here; signed in without the admin
role: 403.
"""

from __future__ import annotations

import html
from urllib.parse import quote

from aiohttp import web

from authproxy import keys
from authproxy.accounts import claims
from authproxy.accounts.model import ROLES
from authproxy.web.api import safe_redirect
from authproxy.web.common import SECURITY_HEADERS, current_session, html_error
from authproxy.web.portal import CSP

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>authproxy: accounts</title><link rel="icon" href="{prefix}/static/favicon.ico">
<link rel="stylesheet" href="{prefix}/static/portal.css">
<link rel="stylesheet" href="{prefix}/static/admin.css">
<script src="{prefix}/static/admin.js" defer></script></head>
<body class="admin" data-api="{prefix}/api/auth">
<header><h1>Accounts</h1><p>Signed in as <strong id="me">{user}</strong>.
<a href="{prefix}/logout">Sign out</a></p></header>
<main role="main">
<div id="status" class="notice" role="status" aria-live="polite" hidden></div>
<div id="error" class="error" role="alert" aria-live="assertive" hidden></div>
{change}
<section aria-labelledby="users-h"><h2 id="users-h">Users</h2>
<table id="users"><caption>Every account, its role and status</caption>
<thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col">Email</th>
<th scope="col">Keys</th><th scope="col">Status</th><th scope="col">Last sign-in</th>
<th scope="col">Actions</th></tr></thead><tbody></tbody></table>
<form id="add-user"><fieldset><legend>Add a user</legend>
<label for="new-username">Username</label>
<input id="new-username" name="username" required autocomplete="off">
<label for="new-password">Password (at least 12 characters)</label>
<input id="new-password" name="password" type="password" required minlength="12" autocomplete="new-password">
<label for="new-role">Role</label><select id="new-role" name="role">{roles}</select>
<label for="new-email">Email</label><input id="new-email" name="email" type="email" autocomplete="off">
<button type="submit">Add user</button></fieldset></form></section>
<section aria-labelledby="keys-h"><h2 id="keys-h">Keys</h2>
<table id="keys"><caption>Upstream keys (their secrets are never shown)</caption>
<thead><tr><th scope="col">Name</th><th scope="col">Algorithm</th><th scope="col">Site</th>
<th scope="col">Id</th><th scope="col">Actions</th></tr></thead><tbody></tbody></table>
<form id="add-key"><fieldset><legend>Add a key</legend>
<label for="key-name">Name</label><input id="key-name" name="name" required autocomplete="off">
<label for="key-algorithm">Algorithm</label><input id="key-algorithm" name="algorithm" autocomplete="off">
<label for="key-secret">Secret</label>
<input id="key-secret" name="secret" type="password" required autocomplete="off">
<button type="submit">Add key</button></fieldset></form>
<form id="grant-keys"><fieldset><legend>Keys a user may use</legend>
<label for="grant-user">User</label><select id="grant-user" name="user"></select>
<fieldset id="grant-choices"><legend>Keys</legend></fieldset>
<button type="submit">Save keys</button></fieldset></form></section>
<section aria-labelledby="sessions-h"><h2 id="sessions-h">Sessions</h2>
<table id="sessions"><caption>Every signed-in session</caption>
<thead><tr><th scope="col">User</th><th scope="col">Site</th><th scope="col">Address</th>
<th scope="col">Started</th><th scope="col">Last seen</th><th scope="col">Actions</th></tr></thead>
<tbody></tbody></table></section>
</main></body></html>"""

CHANGE = """<section aria-labelledby="pw-h"><h2 id="pw-h">Change your password</h2>
<form id="change-password"><fieldset>
<legend>Choose a new password (a first or reset one must be changed before anything else works)</legend>
<label for="current-password">Current password</label>
<input id="current-password" name="currentPassword" type="password" required
 autocomplete="current-password">
<label for="next-password">New password (at least 12 characters)</label>
<input id="next-password" name="newPassword" type="password" required minlength="12"
 autocomplete="new-password">
<button type="submit">Change password</button></fieldset></form></section>"""


async def admin_page(request: web.Request) -> web.StreamResponse:
    prefix = request.app[keys.CONFIG].server.prefix
    loaded = await current_session(request)
    claim = claims.any_claim(loaded.session) if loaded is not None else None
    if claim is None:
        raise web.HTTPSeeOther(f"{prefix}/login?rd={quote(f'{prefix}/admin', safe='')}",
                               headers=SECURITY_HEADERS)
    if claim.role != "admin":
        return html_error(request, 403, "Not allowed", "This page needs the admin role.")
    body = PAGE.format(prefix=html.escape(prefix), user=html.escape(claim.username),
                       roles="".join(f'<option value="{r}">{r}</option>' for r in ROLES),
                       change=CHANGE if claim.must_change_password else "")
    return web.Response(text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": CSP})


PASSWORD_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>authproxy: change your password</title><link rel="icon" href="{prefix}/static/favicon.ico">
<link rel="stylesheet" href="{prefix}/static/portal.css">
<script src="{prefix}/static/admin.js" defer></script></head>
<body data-api="{prefix}/api/auth" data-rd="{rd}"><main class="card" role="main">
<div id="status" class="notice" role="status" aria-live="polite" hidden></div>
<div id="error" class="error" role="alert" aria-live="assertive" hidden></div>
<p>Signed in as <strong>{user}</strong>.</p>
{change}</main></body></html>"""


async def password_page(request: web.Request) -> web.StreamResponse:
    """The forced (or any) password change of a local account, for a browser; then back to `rd`."""
    prefix = request.app[keys.CONFIG].server.prefix
    loaded = await current_session(request)
    claim = claims.any_claim(loaded.session) if loaded is not None else None
    if claim is None:
        raise web.HTTPSeeOther(f"{prefix}/login?rd={quote(request.rel_url.raw_path_qs, safe='')}",
                               headers=SECURITY_HEADERS)
    body = PASSWORD_PAGE.format(prefix=html.escape(prefix), user=html.escape(claim.username),
                                rd=html.escape(safe_redirect(request, request.query.get("rd"))),
                                change=CHANGE)
    return web.Response(text=body, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Content-Security-Policy": CSP})


def setup(app: web.Application, prefix: str) -> None:
    if app[keys.CONFIG].local_accounts:
        app.router.add_get(f"{prefix}/admin", admin_page)
        app.router.add_get(f"{prefix}/password", password_page)
