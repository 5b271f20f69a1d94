"""The option schema of the generic adapter: parse and check `options`, JSON pointers.

Pure (no aiohttp): `parse_spec(options)` -> (GenericSpec, []) or (None, every problem), each problem
naming the option and the fix. The schema itself is documented in `upstreams/generic.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MISSING = object()


def pointer_parts(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with / (e.g. /session/sid)")
    return [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]


def _step(node: Any, part: str) -> Any:
    if isinstance(node, dict):
        return node.get(part, MISSING)
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return node[int(part)]
    return MISSING


def pointer_get(doc: Any, pointer: str, default: Any = None) -> Any:
    node = doc
    for part in pointer_parts(pointer):
        node = _step(node, part)
        if node is MISSING:
            return default
    return node


def pointer_blank(doc: Any, pointer: str) -> bool:
    """Replace the value at `pointer` with null; True when there was a non-null value."""
    parts = pointer_parts(pointer)
    if not parts:
        return False
    node = doc
    for part in parts[:-1]:
        node = _step(node, part)
        if node is MISSING:
            return False
    last = parts[-1]
    if isinstance(node, dict) and node.get(last) is not None:
        node[last] = None
        return True
    if isinstance(node, list) and last.isdigit() and int(last) < len(node) and node[int(last)] is not None:
        node[int(last)] = None
        return True
    return False


@dataclass(frozen=True)
class LoginSpec:
    method: str = "POST"
    path: str = ""
    encoding: str = "form"
    username_field: str = "username"
    password_field: str = "password"
    totp_field: str = ""
    totp_number: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    ok_status: tuple[int, ...] = ()
    blocked_status: tuple[int, ...] = (429,)
    totp_required_status: int = 0
    totp_required_text: str = ""
    success_text: str = ""
    ui_answer: str = ""
    ui_answer_type: str = "text/plain"


@dataclass(frozen=True)
class CredentialSpec:
    from_: str = ""
    name: str = ""
    pointer: str = ""
    ttl: float = 0.0
    ttl_pointer: str = ""


@dataclass(frozen=True)
class InjectSpec:
    as_: str = ""
    name: str = ""
    template: str = "{credential}"


@dataclass(frozen=True)
class ExpirySpec:
    status: tuple[int, ...] = (401,)
    paths: tuple[str, ...] = ()
    json_pointer: str = ""
    json_value: Any = None
    redirect_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class HideSpec:
    json: tuple[str, ...] = ()
    json_paths: tuple[str, ...] = ()
    set_cookies: tuple[str, ...] = ()
    response_headers: tuple[str, ...] = ()
    request_cookies: tuple[str, ...] = ()
    request_headers: tuple[str, ...] = ("Authorization",)
    params: tuple[str, ...] = ()


@dataclass(frozen=True)
class CallSpec:
    method: str = "GET"
    path: str = ""
    intercept: bool = False


@dataclass(frozen=True)
class GenericSpec:
    login: LoginSpec
    credential: CredentialSpec
    inject: InjectSpec
    expiry: ExpirySpec
    hide: HideSpec
    logout: CallSpec
    keepalive: CallSpec
    username: str = ""


_STR, _BOOL, _INT, _NUM, _INTS, _STRS, _TABLE, _ANY = "string", "true/false", "integer", "number", \
    "list of status codes", "list of strings", "table", "value"

SCHEMA: dict[str, dict[str, str]] = {
    "login": {
        "method": _STR,
        "path": _STR,
        "encoding": _STR,
        "username_field": _STR,
        "password_field": _STR,
        "totp_field": _STR,
        "totp_number": _BOOL,
        "fields": _TABLE,
        "ok_status": _INTS,
        "blocked_status": _INTS,
        "totp_required_status": _INT,
        "totp_required_text": _STR,
        "success_text": _STR,
        "ui_answer": _STR,
        "ui_answer_type": _STR,
    },
    "credential": {"from": _STR, "name": _STR, "pointer": _STR, "ttl": _NUM, "ttl_pointer": _STR},
    "inject": {"as": _STR, "name": _STR, "template": _STR},
    "expiry": {
        "status": _INTS,
        "paths": _STRS,
        "json_pointer": _STR,
        "json_value": _ANY,
        "redirect_to": _STRS,
    },
    "hide": {
        "json": _STRS,
        "json_paths": _STRS,
        "set_cookies": _STRS,
        "response_headers": _STRS,
        "request_cookies": _STRS,
        "request_headers": _STRS,
        "params": _STRS,
    },
    "logout": {"method": _STR, "path": _STR, "intercept": _BOOL},
    "keepalive": {"method": _STR, "path": _STR},
    "identity": {"username": _STR},
}


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    if kind == _INTS:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                               and 100 <= v <= 599 for v in value)
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _TABLE:
        return isinstance(value, dict)
    return True


def merge_options(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, table by table (for the built-in configurations)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def parse_spec(options: dict[str, Any], where: str = "options") -> tuple[GenericSpec | None, list[str]]:
    """The spec, or None plus every problem, each naming the option and the fix."""
    c = _Checker(where)
    tables = _tables(options, c)
    login = _login(tables.get("login"), c)
    cred = _credential(tables.get("credential"), c, login)
    inject = _inject(tables.get("inject", {}), c, cred)
    expiry = _expiry(tables.get("expiry", {}), c)
    hide = _hide(tables.get("hide", {}), c, login, cred)
    logout, keepalive = _calls(tables, c)
    username = tables.get("identity", {}).get("username", "")
    if c.problems:
        return None, c.problems
    return GenericSpec(login=login, credential=cred, inject=inject, expiry=expiry, hide=hide, logout=logout,
                       keepalive=keepalive, username=username), []


# What an option not set stands for: the dataclasses' own defaults (written once, above).
_LOGIN, _CRED, _INJECT, _EXPIRY, _HIDE = LoginSpec(), CredentialSpec(), InjectSpec(), ExpirySpec(), HideSpec()
_CALL = CallSpec()


class _Checker:
    """Collects the problems of one `options` (named by `where`) and checks the kinds of value they share."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def path_ok(self, label: str, value: str, *, required: bool = False, prefix: bool = False) -> str:
        where, p = self.where, self.problems
        if not value:
            if required:
                p.append(f"{where}.{label}: required; set the upstream path, e.g. \"/api/login\"")
            return value
        if not value.startswith("/") or any(c in value for c in " ?#\r\n"):
            kind = "path prefix" if prefix else "path"
            p.append(f"{where}.{label}: must be a {kind} starting with / (no query), but it is {value!r}")
        return value

    def method_ok(self, label: str, value: str) -> str:
        if not value.isascii() or not value.isalpha():
            self.problems.append(f"{self.where}.{label}: must be an HTTP method like GET or POST, "
                                 f"but it is {value!r}")
        return value.upper()

    def pointer_ok(self, label: str, value: str) -> str:
        try:
            pointer_parts(value)
        except ValueError:
            self.problems.append(f"{self.where}.{label}: must be a JSON pointer starting with / "
                                 f"(e.g. /session/sid), but it is {value!r}")
        return value

    def choice(self, label: str, value: str, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.problems.append(f"{self.where}.{label}: must be one of {', '.join(allowed)}, "
                                 f"but it is {value!r}")
        return value


def _tables(options: dict[str, Any], c: _Checker) -> dict[str, dict[str, Any]]:
    """Each known table with its known, well-typed options; every unknown name or wrong type is a problem."""
    where, p = c.where, c.problems
    tables: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        if name not in SCHEMA:
            p.append(f"{where}: unknown table {name!r}; known: {', '.join(SCHEMA)}")
            continue
        if not isinstance(value, dict):
            p.append(f"{where}.{name}: must be a table ([sites.options.{name}])")
            continue
        for key, item in value.items():
            kind = SCHEMA[name].get(key)
            if kind is None:
                p.append(f"{where}.{name}: unknown option {key!r}; known: {', '.join(SCHEMA[name])}")
            elif not _type_ok(kind, item):
                p.append(f"{where}.{name}.{key}: must be a {kind}, but it is {item!r}")
        tables[name] = {k: v for k, v in value.items() if k in SCHEMA[name] and _type_ok(SCHEMA[name][k], v)}
    return tables


def _login(lt: dict[str, Any] | None, c: _Checker) -> LoginSpec:
    """[login]: the product's sign-in call (required)."""
    where, p = c.where, c.problems
    if lt is None:
        p.append(f"{where}.login: required; describe the product's login call ([sites.options.login] "
                 "with at least path = \"...\")")
        lt = {}
    login = LoginSpec(
        method=c.method_ok("login.method", lt.get("method", _LOGIN.method)),
        path=c.path_ok("login.path", lt.get("path", _LOGIN.path), required=True),
        encoding=c.choice("login.encoding", lt.get("encoding", _LOGIN.encoding), ("form", "json", "basic")),
        username_field=lt.get("username_field", _LOGIN.username_field),
        password_field=lt.get("password_field", _LOGIN.password_field),
        totp_field=lt.get("totp_field", _LOGIN.totp_field),
        totp_number=lt.get("totp_number", _LOGIN.totp_number),
        fields=dict(lt.get("fields", _LOGIN.fields)), ok_status=tuple(lt.get("ok_status", _LOGIN.ok_status)),
        blocked_status=tuple(lt.get("blocked_status", _LOGIN.blocked_status)),
        totp_required_status=lt.get("totp_required_status", _LOGIN.totp_required_status),
        totp_required_text=lt.get("totp_required_text", _LOGIN.totp_required_text),
        success_text=lt.get("success_text", _LOGIN.success_text),
        ui_answer=lt.get("ui_answer", _LOGIN.ui_answer),
        ui_answer_type=lt.get("ui_answer_type", _LOGIN.ui_answer_type))
    if login.encoding != "basic" and not login.password_field:
        p.append(f"{where}.login.password_field: must name the field the password goes in")
    if login.totp_required_text and not login.totp_field:
        p.append(f"{where}.login.totp_field: set it (the field the one-time code goes in) when "
                 "totp_required_text is set")
    return login


def _credential(ct: dict[str, Any] | None, c: _Checker, login: LoginSpec) -> CredentialSpec:
    """[credential]: where the upstream's session comes back (required)."""
    where, p = c.where, c.problems
    if ct is None:
        p.append(f"{where}.credential: required; say where the session comes back, e.g. "
                 "[sites.options.credential] from = \"cookie\", name = \"session\"")
        ct = {}
    cred = CredentialSpec(
        from_=ct.get("from", _CRED.from_), name=ct.get("name", _CRED.name),
        pointer=c.pointer_ok("credential.pointer", ct.get("pointer", _CRED.pointer)),
        ttl=float(ct.get("ttl", _CRED.ttl)),
        ttl_pointer=c.pointer_ok("credential.ttl_pointer", ct.get("ttl_pointer", _CRED.ttl_pointer)))
    if ct:
        c.choice("credential.from", cred.from_, ("cookie", "json", "header", "basic"))
    if cred.from_ in ("cookie", "header") and not cred.name:
        p.append(f"{where}.credential.name: required for from = {cred.from_!r}; the {cred.from_} name")
    if cred.from_ == "json" and not cred.pointer:
        p.append(f"{where}.credential.pointer: required for from = \"json\", e.g. \"/session/sid\"")
    if cred.from_ == "basic" and login.encoding != "basic":
        p.append(f"{where}.credential.from: \"basic\" needs login.encoding = \"basic\"")
    return cred


def _inject(it: dict[str, Any], c: _Checker, cred: CredentialSpec) -> InjectSpec:
    """[inject]: how the credential goes to the upstream; by default the way it came back."""
    where, p = c.where, c.problems
    default_as = {"cookie": "cookie", "header": "header", "basic": "header"}.get(cred.from_, "")
    default_name = "Authorization" if cred.from_ == "basic" else cred.name
    as_ = it.get("as", default_as)
    inject = InjectSpec(as_=as_, name=it.get("name", default_name if as_ == default_as else ""),
                        template=it.get("template", _INJECT.template))
    if not inject.as_:
        p.append(
            f"{where}.inject.as: required for from = {cred.from_ or 'json'!r}; say header, cookie or query"
        )
    else:
        c.choice("inject.as", inject.as_, ("header", "cookie", "query"))
    if inject.as_ and not inject.name:
        p.append(f"{where}.inject.name: required; the {inject.as_ or 'header'} name the credential goes in")
    if "{credential}" not in inject.template:
        p.append(f"{where}.inject.template: must contain {{credential}}, e.g. \"Bearer {{credential}}\"")
    elif inject.as_ != "header" and inject.template != "{credential}":
        p.append(f"{where}.inject.template: only headers take a template; remove it for as = {inject.as_!r}")
    return inject


def _expiry(et: dict[str, Any], c: _Checker) -> ExpirySpec:
    """[expiry]: the answers that mean the upstream's session has ended."""
    expiry = ExpirySpec(
        status=tuple(et.get("status", _EXPIRY.status)),
        paths=tuple(c.path_ok("expiry.paths", v, prefix=True) for v in et.get("paths", _EXPIRY.paths)),
        json_pointer=c.pointer_ok("expiry.json_pointer", et.get("json_pointer", _EXPIRY.json_pointer)),
        json_value=et.get("json_value", _EXPIRY.json_value),
        redirect_to=tuple(c.path_ok("expiry.redirect_to", v)
                          for v in et.get("redirect_to", _EXPIRY.redirect_to)))
    if expiry.json_pointer and "json_value" not in et:
        c.problems.append(f"{c.where}.expiry.json_value: required with json_pointer; "
                          "the value that means expired")
    return expiry


def _hide(ht: dict[str, Any], c: _Checker, login: LoginSpec, cred: CredentialSpec) -> HideSpec:
    """[hide]: what the browser never sees (by default the login answer's JSON, basic's challenge)."""
    return HideSpec(
        json=tuple(c.pointer_ok("hide.json", v) for v in ht.get("json", _HIDE.json)),
        json_paths=tuple(
            c.path_ok("hide.json_paths", v, prefix=True) for v in ht.get("json_paths", _HIDE.json_paths)
        )
        or ((login.path,) if login.path else ()),
        set_cookies=tuple(ht.get("set_cookies", _HIDE.set_cookies)),
        response_headers=tuple(
            ht.get("response_headers", ("WWW-Authenticate",) if cred.from_ == "basic" else ())
        ),
        request_cookies=tuple(ht.get("request_cookies", _HIDE.request_cookies)),
        request_headers=tuple(ht.get("request_headers", _HIDE.request_headers)),
        params=tuple(ht.get("params", _HIDE.params)),
    )


def _calls(tables: dict[str, dict[str, Any]], c: _Checker) -> tuple[CallSpec, CallSpec]:
    """[logout] and [keepalive]: the upstream calls that end and keep alive its session."""
    def call(name: str, default_method: str) -> CallSpec:
        t = tables.get(name, {})
        return CallSpec(method=c.method_ok(f"{name}.method", t.get("method", default_method)),
                        path=c.path_ok(f"{name}.path", t.get("path", _CALL.path)),
                        intercept=t.get("intercept", _CALL.intercept))

    logout, keepalive = call("logout", "POST"), call("keepalive", "GET")
    if logout.intercept and not logout.path:
        c.problems.append(f"{c.where}.logout.intercept: needs logout.path (the UI's sign-out call)")
    return logout, keepalive
