"""Fixtures that start a FakeTechnitium (v15 or v14) per test and stop it even when the test fails.

Users in both: `alice` / `alice-pass` (administrator, no 2FA) and `totpuser` / `totp-pass` (administrator
with TOTP; the secret is `fake.totp_secret`, and `fake.totp_now()` gives the code at the fake's clock).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tests.fakes.technitium import FakeTechnitium

TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
ALICE = ("alice", "alice-pass")
TOTP_USER = ("totpuser", "totp-pass")


def _populate(fake: FakeTechnitium) -> FakeTechnitium:
    fake.add_user(*ALICE, display_name="Alice Example")
    fake.add_user(*TOTP_USER, display_name="TOTP User", totp_secret=TOTP_SECRET)
    fake.totp_secret = TOTP_SECRET
    return fake


@pytest_asyncio.fixture
async def technitium() -> AsyncIterator[FakeTechnitium]:
    """Technitium v15.2: Bearer header or `token` field, header wins."""
    fake = _populate(FakeTechnitium(api_version=15))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest_asyncio.fixture
async def technitium_v14() -> AsyncIterator[FakeTechnitium]:
    """Technitium v14.3: only the `token` query/form field is read."""
    fake = _populate(FakeTechnitium(api_version=14))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
