"""Who the person is (identity sources) apart from what the upstream is sent (credential policies)."""

from __future__ import annotations

from typing import Any, ClassVar, cast

import pytest

from authproxy.config.schema import SessionConfig, SiteConfig, ThrottleConfig
from authproxy.crypto import Keyring, Secret
from authproxy.errors import AuthError
from authproxy.login.passthrough import LoginInput, PassthroughLogin
from authproxy.login.regulation import Regulator
from authproxy.login.sources import IdentitySource, UpstreamAccounts
from authproxy.policy import OWN, HybridCredential, ServiceCredential
from authproxy.routing import Router, Site
from authproxy.sessions.manager import SessionManager
from authproxy.sessions.memory import MemoryStore
from authproxy.sessions.model import Credential, Identity, Session
from authproxy.upstreams.base import LoginResult

DNS = SiteConfig(
    name="dns", upstream_url="http://127.0.0.1:1", type="technitium", service_token=Secret("s" * 64)
)


def test_auth_mode_none_sends_the_sites_service_credential_whoever_asks() -> None:
    (site,) = Router.build((DNS,), cast(Any, None), auth_mode="none").sites
    assert isinstance(site.policy, ServiceCredential)
    service = site.policy.credential(None, "dns")
    # Built once, by the adapter: Technitium sends an unversioned service token both ways.
    assert service is not None and service.secret == "s" * 64 and service.actor == "service"
    assert service.extra == {"mode": "both"}
    assert site.policy.credential(None, "dns") is service


@pytest.mark.parametrize("mode", ["session", "hybrid"])
def test_session_modes_send_the_persons_own_credential_for_that_site(mode: str) -> None:
    (site,) = Router.build((DNS,), cast(Any, None), auth_mode=mode).sites
    if mode == "session":
        assert site.policy is OWN and site.policy.for_service() is None   # no service clients at all
    else:
        # hybrid: the service credential exists, but only for an authenticated service client
        assert isinstance(site.policy, HybridCredential)
        service = site.policy.for_service()
        assert service is not None and service.secret == "s" * 64 and service.actor == "service"
    own = Credential(secret="alice-token")
    session = Session(user="alice", site="dns", identity=Identity("alice"), credentials={"dns": own})
    assert site.policy.credential(session, "dns") is own
    assert site.policy.credential(session, "nas") is None     # signed in elsewhere only
    assert site.policy.credential(None, "dns") is None        # nobody signed in: never the service token


class Codes(IdentitySource):
    """A source in two steps (password, then a code) that hands out no upstream token of its own."""

    name: ClassVar[str] = "codes"

    def __init__(self) -> None:
        self.asked: list[tuple[str, str | None]] = []

    async def verify(self, site: Site, username: str, password: str, totp: str | None,
                     client_ip: str) -> LoginResult:
        self.asked.append((username, totp))
        if password != "pw":
            return LoginResult("invalid", message="Invalid username or password.")
        if totp is None:
            return LoginResult("totp_required", message="Send the code.")
        return LoginResult(
            "ok", credential=Credential(secret="t"), identity=Identity(username, groups=("ops",))
        )


async def test_every_identity_source_is_throttled_audited_and_recorded_the_same_way() -> None:
    store = MemoryStore()
    await store.start()
    sessions = SessionManager(store=store, keyring=Keyring([Secret("k" * 40)]), config=SessionConfig())
    codes = Codes()
    login = PassthroughLogin(sessions, Regulator(store, ThrottleConfig(max_failures=2)), source=codes)
    site = Site(config=DNS, adapter=cast(Any, None))
    with pytest.raises(AuthError) as step:
        await login.sign_in(site, LoginInput("bob", "pw", None), "192.0.2.1")
    assert step.value.code == "totp_required"
    loaded, _ = await login.sign_in(site, LoginInput("bob", "pw", "123456"), "192.0.2.1")
    assert loaded.session.auth_method == "codes" and loaded.session.identity.groups == ("ops",)
    for _ in range(2):
        with pytest.raises(AuthError):
            await login.sign_in(site, LoginInput("bob", "wrong", None), "192.0.2.1")
    with pytest.raises(AuthError) as throttled:
        await login.sign_in(site, LoginInput("bob", "pw", "123456"), "192.0.2.1")
    assert throttled.value.code == "too_many_attempts"
    assert len(codes.asked) == 4              # the throttled attempt never reached the source
    assert PassthroughLogin(sessions, Regulator(store, ThrottleConfig())).source.name == "passthrough"
    assert isinstance(PassthroughLogin(sessions, Regulator(store, ThrottleConfig())).source, UpstreamAccounts)
    await store.close()
