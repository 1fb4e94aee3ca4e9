"""Password hashing (PBKDF2-SHA256 with a per-user salt) and key generation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 100_000


def hash_password(password: str) -> str:
    """PBKDF2 with a random salt, so that stored passwords cannot be read back."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
    return f"pbkdf2_sha256${ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Checks a password against its stored hash in constant time."""
    try:
        scheme, iterations, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt_b64), int(iterations))
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def new_api_key() -> str:
    """A random API or secret key, long enough that it cannot be guessed."""
    return secrets.token_urlsafe(64)


def new_session_key() -> str:
    """A random session key for the UI's login cookie."""
    return secrets.token_urlsafe(24)
