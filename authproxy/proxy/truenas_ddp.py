"""TrueNAS's legacy DDP socket (`/websocket`) through authproxy, answered in band like `/api/current`.

Older clients (aiotruenas-client, scripts from before the JSON-RPC API) speak DDP: `connect` ->
`connected`, `method` -> `result`, `sub`/`unsub` -> `ready`/`nosub` and `added`/`changed`/`removed`
events. authproxy answers them exactly as it answers JSON-RPC clients (proxy/truenas_bridge.py: the
same `auth.*` calls, sign-in, placeholders, limits) and relays every other call to its own upstream
JSON-RPC socket, translating each way: a method call becomes a request with the client's id, a `sub`
becomes `core.subscribe`, results, errors and `collection_update` events become DDP messages. Every
message is parsed (no fast path): this is the compatibility path, not the fast one.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import WSCloseCode, WSMsgType

from authproxy.proxy.truenas_bridge import AUTH_LIMIT, ENOTAUTHENTICATED, UNAUTH_LIMIT, InBand, reserved_id

_SUB = "authproxy-ddp-sub:"  # upstream ids of the calls that stand for a client's sub/unsub
_UNSUB = "authproxy-ddp-unsub:"


def _ddp_error(error: Any) -> dict[str, Any]:
    """A JSON-RPC error object as DDP's `error` field (errno, errname, reason without its prefix)."""
    error = error if isinstance(error, dict) else {}
    data: dict[str, Any] = error["data"] if isinstance(error.get("data"), dict) else {}
    reason = str(data.get("reason") or error.get("message") or "")
    if reason.startswith("[") and "] " in reason:
        reason = reason.split("] ", 1)[1]
    return {
        "error": data.get("error"),
        "errname": data.get("errname"),
        "type": None,
        "reason": reason,
        "trace": data.get("trace"),
        "extra": data.get("extra"),
    }


def ddp_of(answer: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC answer as DDP's `result` message."""
    if "error" in answer:
        return {"msg": "result", "id": answer.get("id"), "error": _ddp_error(answer["error"])}
    return {"msg": "result", "id": answer.get("id"), "result": answer.get("result")}


class DdpInBand(InBand):
    """One DDP client socket: the in-band bridge with DDP on the client's side."""

    connected = False
    subs: dict[str, str]  # upstream subscription id -> the client's sub id

    async def _client_loop(self) -> None:
        self.subs = {}
        async for msg in self.ws:
            if msg.type != WSMsgType.TEXT:
                await self.ws.close(
                    code=WSCloseCode.UNSUPPORTED_DATA, message=b"Invalid websocket message type"
                )
                return
            data: bytes = msg.data
            if len(data) > (AUTH_LIMIT if self.authed else UNAUTH_LIMIT):
                await self.ws.close(
                    code=WSCloseCode.MESSAGE_TOO_BIG if self.authed else WSCloseCode.INVALID_TEXT,
                    message=b"Max message length exceeded",
                )
                return
            try:
                message = json.loads(data)
            except ValueError:
                continue  # middlewared's DDP app drops what it cannot parse
            if isinstance(message, dict) and not await self._ddp(message):
                return

    async def _send(self, message: dict[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_str(json.dumps(message))

    async def _ddp(self, message: dict[str, Any]) -> bool:
        """One client message; False when the socket is done."""
        kind = message.get("msg")
        if kind == "connect":
            if message.get("version") != "1":
                await self._send({"msg": "failed", "version": "1"})
                await self.ws.close()
                return False
            self.connected = True
            await self._send({"msg": "connected", "session": str(uuid.uuid4())})
        elif kind == "ping":
            await self._send({"msg": "pong", **({"id": message["id"]} if "id" in message else {})})
        elif not self.connected:
            return True
        elif kind == "method":
            await self._method(message)
        elif kind in ("sub", "unsub"):
            await self._subscription(kind, message)
        return True

    async def _method(self, message: dict[str, Any]) -> None:
        id_, method = message.get("id"), message.get("method")
        params = message.get("params") or []
        if not isinstance(method, str) or reserved_id(id_):
            return  # middlewared drops what it cannot take; authproxy's own ids are not the client's
        if not isinstance(params, list):
            params = [params]
        answer = await self._local(method, id_, params)
        if answer is not None:
            await self._send(ddp_of(json.loads(answer)))
            return
        if not self.authed or self.upstream is None:
            await self._send(ddp_of(self._not_authenticated(id_)))
            return
        if "subscribe" in method:
            self.subscribed = True
        await self.upstream.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        )

    async def _subscription(self, kind: str, message: dict[str, Any]) -> None:
        id_ = str(message.get("id"))
        if not self.authed or self.upstream is None:
            await self._send(
                {"msg": "nosub", "id": id_, "error": _ddp_error(self._not_authenticated(id_)["error"])}
            )
            return
        self.subscribed = True
        if kind == "sub":
            call = {
                "jsonrpc": "2.0",
                "id": _SUB + id_,
                "method": "core.subscribe",
                "params": [str(message.get("name") or "")],
            }
        else:
            upstream_id = next((u for u, c in self.subs.items() if c == id_), None)
            if upstream_id is None:
                await self._send({"msg": "nosub", "id": id_})
                return
            del self.subs[upstream_id]
            call = {
                "jsonrpc": "2.0",
                "id": _UNSUB + id_,
                "method": "core.unsubscribe",
                "params": [upstream_id],
            }
        await self.upstream.ws.send_str(json.dumps(call))

    @staticmethod
    def _not_authenticated(id_: Any) -> dict[str, Any]:
        return {
            "id": id_,
            "error": {
                "code": -32001,
                "message": "Method call error",
                "data": {
                    "error": ENOTAUTHENTICATED,
                    "errname": "ENOTAUTHENTICATED",
                    "reason": "[ENOTAUTHENTICATED] Not authenticated",
                    "trace": None,
                    "extra": None,
                },
            },
        }

    async def _from_upstream(self, data: bytes) -> None:
        """Upstream JSON-RPC answers and events, as DDP."""
        try:
            answer = json.loads(data)
        except ValueError:
            return
        if not isinstance(answer, dict):
            return
        if answer.get("method") == "collection_update" and isinstance(answer.get("params"), dict):
            await self._send(answer["params"])  # {msg: added|changed|removed, collection, id, fields}
            return
        id_ = answer.get("id")
        if isinstance(id_, str) and id_.startswith(_SUB):
            client_id = id_[len(_SUB) :]
            if "error" in answer:
                await self._send({"msg": "nosub", "id": client_id, "error": _ddp_error(answer["error"])})
            else:
                self.subs[str(answer.get("result"))] = client_id
                await self._send({"msg": "ready", "subs": [client_id]})
            return
        if isinstance(id_, str) and id_.startswith(_UNSUB):
            await self._send({"msg": "nosub", "id": id_[len(_UNSUB) :]})
            return
        await self._send(ddp_of(answer))
        if (
            "error" in answer
            and isinstance(answer["error"], dict)
            and (_ddp_error(answer["error"]).get("errname") == "ENOTAUTHENTICATED")
        ):
            await self.ws.close(code=4001, message=b"session ended: sign in again")
