"""TrueNAS placeholders (proxy/truenas_handoff.py): the session sealed with an end, good only here."""

from __future__ import annotations

from authproxy.crypto import Keyring, Secret
from authproxy.proxy import truenas_handoff as handoff
from authproxy.sessions.manager import LoadedSession
from authproxy.sessions.model import Identity, Session
from authproxy.sessions.ticket import new_ticket

KEYRING = Keyring([Secret("s" * 64)])


def loaded(expires_at: float = 10_000.0) -> LoadedSession:
    ticket = new_ticket()
    session = Session(user="alice", site="nas", identity=Identity("alice"), expires_at=expires_at)
    return LoadedSession(session=session, ticket=ticket, store_key=ticket.store_key)


def test_a_placeholder_stands_for_its_session_until_it_ends() -> None:
    one = loaded()
    token = handoff.issue(one, KEYRING, "nas", now=1000.0, ttl=300)
    assert token.startswith("authproxy_") and one.ticket.encode(KEYRING) not in token
    assert handoff.cookie_of(token, KEYRING, "nas", now=1299.0) == one.ticket.encode(KEYRING)
    assert handoff.cookie_of(token, KEYRING, "nas", now=1301.0) is None             # its ttl
    assert handoff.cookie_of(token, KEYRING, "other", now=1000.0) is None           # another site
    assert handoff.cookie_of(token, Keyring([Secret("t" * 64)]), "nas", now=1000.0) is None
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert handoff.cookie_of(tampered, KEYRING, "nas", now=1000.0) is None
    assert handoff.cookie_of("authproxy_!!", KEYRING, "nas", now=1000.0) is None
    assert handoff.cookie_of("a" * 64, KEYRING, "nas", now=1000.0) is None


def test_never_past_the_session_and_bounded_ttls() -> None:
    short = loaded(expires_at=1100.0)
    token = handoff.issue(short, KEYRING, "nas", now=1000.0, ttl=86400)
    assert handoff.cookie_of(token, KEYRING, "nas", now=1099.0) is not None
    assert handoff.cookie_of(token, KEYRING, "nas", now=1101.0) is None
    tiny = handoff.issue(loaded(), KEYRING, "nas", now=1000.0, ttl=1)              # at least 60 s
    assert handoff.cookie_of(tiny, KEYRING, "nas", now=1059.0) is not None
    default = handoff.issue(loaded(), KEYRING, "nas", now=1000.0, ttl="x")         # 600 s
    assert handoff.cookie_of(default, KEYRING, "nas", now=1599.0) is not None
    assert handoff.cookie_of(default, KEYRING, "nas", now=1601.0) is None
