"""Passwords (slow salted scrypt) and API keys (256-bit random, stored as sha256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

KEY_PREFIX = "ck_"
# Characters of a key shown in listings: "ck_" plus 8 of its random characters.
SHOWN_PREFIX_LENGTH = 11


# Characters that never belong in an e-mail or a name: control (NUL, escapes), format
# (zero-width, bidi overrides), private-use, surrogates, line and paragraph separators.
UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})
# Providers that ignore dots in the mailbox name; googlemail.com is gmail.com.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


def unsafe_characters(text: str) -> bool:
    return any(unicodedata.category(c) in UNSAFE_CATEGORIES for c in text)


def canonical_email(email: str) -> str:
    """One spelling per mailbox, or ValueError saying what is wrong.

    The rule (docs/api/index.md): NFKC, trimmed; syntax checked by email-validator (one
    @, no trailing dot, ...); the mailbox name must be ASCII (no look-alike letters from
    other scripts) and the domain is stored in its IDNA (punycode) form; all lower case;
    a "+tag" is dropped (sub-addressing, as most providers deliver it to the same
    mailbox); at gmail.com and googlemail.com dots are dropped too.
    """
    from email_validator import EmailNotValidError, validate_email

    text = unicodedata.normalize("NFKC", email).strip()
    if unsafe_characters(text):
        raise ValueError("it holds control, zero-width or direction characters")
    try:
        checked = validate_email(text, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    local, domain = checked.ascii_email.lower().rsplit("@", 1)
    local = local.split("+", 1)[0]
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    if not local:
        raise ValueError("the part before the @ is empty once its +tag is dropped")
    return f"{local}@{domain}"


def normalise_email(email: str) -> str:
    """The canonical form for a lookup; an invalid address gets a form no account has."""
    try:
        return canonical_email(email)
    except ValueError:
        return unicodedata.normalize("NFKC", email).strip().lower()


def weak_password_reason(password: str, related: list[str]) -> str | None:
    """Why a password is too easy to guess (zxcvbn: dictionaries, names, patterns, leaked
    lists), or None if it is strong enough (score 3 of 4; the first 100 characters)."""
    from zxcvbn import zxcvbn

    verdict = zxcvbn(password[:100], user_inputs=[r for r in related if r])
    if verdict["score"] >= 3:
        return None
    feedback = verdict.get("feedback") or {}
    return feedback.get("warning") or " ".join(feedback.get("suggestions") or []) or "too easy to guess"


def hash_password(password: str, *, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """scrypt with a random salt; the string carries its parameters: scrypt$n$r$p$salt$hash."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, n, r, p)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, _unb64(digest))


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits from the OS's CSPRNG


def new_signup_code() -> str:
    """The code a sign-up e-mail carries: 128 random bits (stored, like keys, only as sha256)."""
    return secrets.token_urlsafe(16)


def hash_api_key(api_key: str) -> str:
    # A fast hash is safe here, unlike for passwords: the key is 256 random bits, so
    # nothing can be guessed from the hash, and a deterministic hash lets a key be
    # found by an indexed lookup of its hash.
    return hashlib.sha256(api_key.encode()).hexdigest()


def shown_prefix(api_key: str) -> str:
    return api_key[:SHOWN_PREFIX_LENGTH]


def dummy_password_hash(n: int) -> str:
    """Verified when the e-mail is unknown, so a wrong e-mail costs as long as a wrong password."""
    return hash_password(secrets.token_hex(16), n=n)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        unicodedata.normalize("NFKC", password).encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r + 2**20, dklen=32
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
