"""Secrets, signing keys, sealing, tickets, and the session manager's expiry rules (memory store, fake
clock)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from authproxy.config.schema import SessionConfig
from authproxy.crypto import Keyring, Secret, b64d, b64e, seal, unseal
from authproxy.sessions.manager import SessionManager
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.model import Credential, Identity, Session
from authproxy.sessions.ticket import MAX_TICKET_LENGTH, Ticket, decode_ticket, new_ticket
from tests.fakes.technitium import FakeClock

KEYS = Keyring([Secret("k" * 40)])


# ---- Secret ----------------------------------------------------------------------------------------------

def test_secret_never_shows_itself() -> None:
    s = Secret("hunter2-is-my-password")
    assert (
        "hunter2" not in repr(s)
        and "hunter2" not in str(s)
        and "hunter2" not in f"{s}"
        and "hunter2" not in f"{s!r}"
    )
    assert "hunter2" not in repr([s]) and "hunter2" not in repr({"a": s})
    assert s.reveal() == "hunter2-is-my-password"
    assert (
        s == Secret("hunter2-is-my-password") and s != Secret("other") and hash(s) == hash(Secret(s.reveal()))
    )
    assert not Secret("") and bool(s)


# ---- base64 and small helpers ---------------------------------------------------------------------------

def test_b64_is_strict() -> None:
    data = bytes(range(256))
    assert b64d(b64e(data)) == data
    assert "=" not in b64e(b"ab")
    for bad in ("", "a+b", "ab/c", "abc=", "a b", "é", "a" * 5000, "ab\n"):
        with pytest.raises(ValueError):
            b64d(bad)


# ---- Keyring ---------------------------------------------------------------------------------------------

def test_keyring_signs_with_the_newest_and_verifies_with_all() -> None:
    old, new = Keyring([Secret("old" * 12)]), Keyring([Secret("new" * 12), Secret("old" * 12)])
    msg = b"v1.abc.def"
    assert new.verify(msg, old.sign(msg))                 # rotation: old cookies keep working
    assert new.verify(msg, new.sign(msg))
    assert not old.verify(msg, new.sign(msg))             # the new key is not known to the old ring
    assert not new.verify(msg + b"x", new.sign(msg))
    assert not new.verify(msg, b"\x00" * 32)
    with pytest.raises(ValueError):
        Keyring([])


# ---- sealing ---------------------------------------------------------------------------------------------

def test_seal_and_unseal() -> None:
    key, other = b"\x01" * 32, b"\x02" * 32
    blob = seal(key, b"plaintext", b"aad")
    assert b"plaintext" not in blob and unseal(key, blob, b"aad") == b"plaintext"
    assert seal(key, b"plaintext", b"aad") != blob  # fresh nonce every time
    assert unseal(other, blob, b"aad") is None
    assert unseal(key, blob, b"other-aad") is None      # a blob moved to another key in the store
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    assert unseal(key, bytes(tampered), b"aad") is None
    assert unseal(key, blob[:20], b"aad") is None and unseal(key, b"", b"aad") is None


# ---- tickets ---------------------------------------------------------------------------------------------

def test_ticket_round_trip() -> None:
    ticket = new_ticket()
    value = ticket.encode(KEYS)
    assert value.startswith("v1.") and value.count(".") == 3 and len(value) <= MAX_TICKET_LENGTH
    assert decode_ticket(value, KEYS) == ticket
    assert decode_ticket(value, Keyring([Secret("z" * 40), Secret("k" * 40)])) == ticket


def test_store_key_is_a_hash_of_the_id_only() -> None:
    ticket = new_ticket()
    assert ticket.store_key.startswith("s:")
    assert b64e(ticket.session_id) not in ticket.store_key and b64e(ticket.key) not in ticket.store_key
    assert Ticket(ticket.session_id, b"\x00" * 32).store_key == ticket.store_key
    assert new_ticket().store_key != ticket.store_key


def test_bad_tickets_are_rejected() -> None:
    ticket = new_ticket()
    value = ticket.encode(KEYS)
    v, sid, key, sig = value.split(".")
    other_key = b64e(b"\x07" * 32)
    bad = [
        None,
        "",
        "v1",
        value + ".x",
        value[:-1],
        value + "A",
        "v2" + value[2:],
        f"{v}.{sid}.{other_key}.{sig}",
        f"{v}.{b64e(b'short')}.{key}.{sig}",
        f"{v}.{sid}.{b64e(b'short')}.{sig}",
        f"{v}.{sid}.{key}.{sig[:-2]}",
        f"{v}.{sid}.{key}.{sig[:-1]}+",
        value.replace(".", ".."),
        value + "A" * MAX_TICKET_LENGTH,
        value.upper(),
        ticket.encode(Keyring([Secret("z" * 40)])),
        "v1.\x00.\x00.\x00",
        "v1.é.é.é",
    ]
    for item in bad:
        assert decode_ticket(item, KEYS) is None, item


# ---- the session manager (memory store, one fake clock for both) ------------------------------------------

def manager(
    idle: float = 60, max_age: float = 3600, cache_ttl: float = 2.0
) -> tuple[SessionManager, FakeClock]:
    clock = FakeClock(1_000_000.0)
    store = MemoryStore(clock=clock)
    config = SessionConfig(
        idle_timeout=idle, max_age=max_age, cache_ttl=cache_ttl, secrets=(Secret("k" * 40),)
    )
    sm = SessionManager(store=store, keyring=KEYS, config=config, clock=clock)
    sm.start()
    return sm, clock


async def open_session(sm: SessionManager, user: str = "alice", site: str = "dns") -> str:
    cred = Credential(secret="upstream-token-" + "9" * 40)
    _, cookie = await sm.create(user=user, site=site, identity=Identity(username=user), credential=cred,
                                client_ip="192.0.2.1")
    return cookie


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    return [(r.fields["event"], r.fields["outcome"], r.fields["user"])  # type: ignore[attr-defined]
            for r in caplog.records if r.name == "authproxy.audit"]


async def test_the_store_holds_only_sealed_bytes() -> None:
    sm, _ = manager()
    cookie = await open_session(sm)
    dump = repr(sm.store._data) + repr(sm.store._indexes)  # type: ignore[attr-defined]
    assert "upstream-token" not in dump and "alice" not in dump and cookie not in dump
    for part in cookie.split(".")[1:]:
        assert part not in dump


@pytest.mark.parametrize("cache_ttl", [0.0, 2.0, 30.0])
async def test_idle_timeout_slides_with_use_and_ends_without(cache_ttl: float,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authproxy.audit")
    sm, clock = manager(idle=10, cache_ttl=cache_ttl)
    busy, quiet = await open_session(sm), await open_session(sm, "bob")
    assert await sm.load(quiet) is not None
    for _ in range(10):  # 50 s of activity every 5 s: far beyond the 10 s idle timeout
        clock.advance(5)
        assert await sm.load(busy) is not None
    assert await sm.load(quiet) is None  # even while a cached copy exists
    clock.advance(10.1)
    assert await sm.load(busy, client_ip="192.0.2.9") is None
    assert await sm.load(busy) is None
    assert sorted(audit_lines(caplog)) == [
        ("expiry", "idle_timeout", "alice"),
        ("expiry", "idle_timeout", "bob"),
    ]


async def test_absolute_lifetime(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authproxy.audit")
    sm, clock = manager(idle=10, max_age=30)
    cookie = await open_session(sm)
    for _ in range(5):
        clock.advance(5)
        assert await sm.load(cookie) is not None
    clock.advance(5.1)
    assert await sm.load(cookie) is None
    assert audit_lines(caplog) == [("expiry", "max_age", "alice")]


async def test_destroy_and_revocation_are_not_reported_as_expiry(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="authproxy.audit")
    sm, clock = manager()
    one = await open_session(sm)
    loaded = await sm.load(one)
    assert loaded is not None
    await sm.destroy(loaded)
    assert await sm.load(one) is None
    a, b, other = await open_session(sm), await open_session(sm), await open_session(sm, "bob")
    loaded = await sm.load(a)  # cached
    assert loaded is not None
    assert await sm.destroy_everywhere(loaded) == 2
    assert await sm.load(a) is None and await sm.load(b) is None and await sm.load(other) is not None
    clock.advance(61)
    assert audit_lines(caplog) == []


async def test_sign_out_everywhere_ends_the_accounts_sessions_only() -> None:
    """An account is a user name at a site: another site's "alice" (Pi-hole takes any typed name) is
    not touched; a session that carries alice's dns credential over from an earlier sign-in is."""
    sm, _ = manager()
    phone, laptop = await open_session(sm), await open_session(sm)
    elsewhere, bob = await open_session(sm, "alice", site="pihole"), await open_session(sm, "bob")
    # The laptop also signs in at qBittorrent as carol: its new session keeps alice's dns credential.
    old = await sm.load(laptop)
    assert old is not None
    new, laptop = await sm.create(user="carol", site="qbt", identity=Identity(username="carol"),
                                  credential=Credential(secret="qbt-cookie"), client_ip="192.0.2.1")
    await sm.adopt(new, old)
    assert set((await sm.load(laptop)).session.credentials) == {"dns", "qbt"}  # type: ignore[union-attr]

    mine = await sm.load(phone)
    assert mine is not None
    assert await sm.destroy_everywhere(mine) == 2  # the phone's and the laptop's
    assert await sm.load(phone) is None and await sm.load(laptop) is None
    assert await sm.load(elsewhere) is not None and await sm.load(bob) is not None
    assert await sm.destroy_everywhere(mine) == 0  # nothing left, and the indexes are gone too


async def test_a_ticket_for_another_session_key_cannot_open_it() -> None:
    sm, _ = manager()
    cookie = await open_session(sm)
    _v, sid, _key, _sig = cookie.split(".")
    forged = Ticket(b64d(sid), b"\x05" * 32).encode(KEYS)  # right id, signed, wrong key
    assert await sm.load(forged) is None
    assert await sm.load(cookie) is not None  # and the real session is untouched by the attempt


async def test_session_model_round_trip() -> None:
    s = Session(user="alice", site="dns", identity=Identity("alice", groups=("admins",)),
                credentials={"dns": Credential(secret="t", extra={"mode": "bearer"}, upstream_ttl=1800)},
                expires_at=5.0)
    again = Session.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s
    assert "secret=" not in repr(s.credentials["dns"])
    with pytest.raises(ValueError):
        Session.from_dict({**s.to_dict(), "v": 2})


class GatedStore(MemoryStore):
    """The next session GET reads the value at once (as Redis serves it) but its reply lands only
    when the gate opens: a logout elsewhere can overtake it."""

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.gate: asyncio.Event | None = None

    async def get(self, key: str) -> bytes | None:
        value = await super().get(key)
        gate = self.gate
        if gate is not None and key.startswith("s:"):
            self.gate = None
            await gate.wait()
        return value


async def test_a_logout_that_overtakes_a_store_read_is_not_undone_by_its_answer() -> None:
    clock = FakeClock(1_000_000.0)
    store = GatedStore(clock=clock)
    config = SessionConfig(idle_timeout=600, max_age=3600, cache_ttl=2.0)
    a, b = (SessionManager(store=store, keyring=KEYS, config=config, clock=clock) for _ in range(2))
    a.start()
    b.start()   # two replicas on one store (the memory store publishes to both)
    loaded, cookie = await a.create(user="alice", site="dns", identity=Identity(username="alice"),
                                    credential=Credential(secret="tok"), client_ip="192.0.2.1")
    assert await b.load(cookie) is not None         # B caches it
    clock.advance(3)                                # B's copy is stale; no touch is due yet
    store.gate = gate = asyncio.Event()
    request_on_b = asyncio.create_task(b.load(cookie))
    await asyncio.sleep(0)                          # B's GET is on the wire
    victim = await a.load(cookie)
    assert victim is not None
    await a.destroy(victim)                         # the logout on A lands first
    gate.set()
    await request_on_b                              # (concurrent with the logout: either answer is fair)
    assert await store.get(loaded.store_key) is None
    assert await b.load(cookie) is None             # but nothing after it may see the session
