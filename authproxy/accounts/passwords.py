"""Password hashes and password rules for authproxy's own accounts.

argon2id (argon2-cffi, RFC 9106's second recommended profile, the library's defaults) for every hash
authproxy writes; bcrypt (the `bcrypt` package) only to check a hash imported from a `users.json`,
which is then re-hashed with argon2id at the person's next successful sign-in. A hash that is neither
never matches. Verification costs the same whether or not the account exists (`dummy_verify`), so the
answer's timing does not say which names are taken.
"""

from __future__ import annotations

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 1024
_HASHER = PasswordHasher()
_DUMMY = _HASHER.hash("authproxy-no-such-account")

# The most common passwords of at least 12 characters (from public breach-corpus top lists), lower
# case: refused whatever their case. Shorter ones are refused by length already.
COMMON = frozenset({
    "123456789012", "1234567890123", "12345678901234", "123456789abc", "1q2w3e4r5t6y", "1qaz2wsx3edc",
    "qwertyuiop12", "qwertyuiopasdfghjkl", "qwerty123456", "password1234", "password12345",
    "password123!", "passwordpassword", "administrator", "administrator1", "adminadmin123",
    "letmein12345", "iloveyou1234", "welcome12345", "welcome123456", "changeme1234", "changemenow!",
    "trustno1trustno1", "abcdefghijkl", "abc123abc123", "aaaaaaaaaaaa", "111111111111", "000000000000",
    "qazwsxedcrfv", "zaq12wsxcde3", "1234qwerasdf", "asdfghjkl123", "monkey123456", "football1234",
    "baseball1234", "superman1234", "dragon123456", "sunshine1234", "princess1234", "starwars1234",
    "passw0rd1234", "p@ssw0rd1234", "p@ssword1234", "qwertyqwerty", "masterpassword", "letmeinnow!!",
    "correcthorsebatterystaple", "mypassword123", "mypassword1234", "secret123456", "admin1234567",
    "rootpassword", "homelab12345", "authproxy123", "authproxy1234",
})


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def is_bcrypt(stored: str) -> bool:
    return stored.startswith(("$2a$", "$2b$", "$2y$"))


def verify(stored: str, password: str) -> bool:
    """Whether `password` matches `stored` (argon2id, or an imported bcrypt hash); never raises."""
    if is_bcrypt(stored):
        try:
            return bcrypt.checkpw(password.encode("utf-8"), stored.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return False
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def dummy_verify(password: str) -> None:
    """As long as a real check, for a name that has no account."""
    try:
        _HASHER.verify(_DUMMY, password)
    except VerificationError:
        pass


def needs_upgrade(stored: str) -> bool:
    """A bcrypt hash, or an argon2 hash with weaker parameters than today's: re-hash after sign-in."""
    if is_bcrypt(stored):
        return True
    try:
        return _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def problem(password: str, username: str) -> str | None:
    """What is wrong with a new password, in words the person can act on; None: it is fine."""
    if len(password) < MIN_LENGTH:
        return f"The password must be at least {MIN_LENGTH} characters long."
    if len(password) > MAX_LENGTH:
        return f"The password must be at most {MAX_LENGTH} characters long."
    lowered = password.lower()
    if lowered in COMMON:
        return "This password is one of the most common ones; choose another."
    if username and lowered == username.lower():
        return "The password must not be the user name."
    if len(set(password)) < 3:
        return "The password repeats too few characters; choose another."
    return None
