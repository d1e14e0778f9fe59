"""E-mails to account holders (sign-up codes, notices), delivered out of band.

The embedded default is an outbox folder: one RFC 5322 message per file (stdlib `email`),
owner-only, written atomically; a mail relay (or the developer, or a test) picks them up.
Files older than MAIL_OUTBOX_HOURS are deleted by the accounts sweep, since each holds an
address. Nothing here logs an address or a code.
"""

from __future__ import annotations

import email.policy
import os
import secrets
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

SENDER = "Cutout <no-reply@cutout.example.com>"
# The header that carries a sign-up code, so that tools and tests need not parse the text.
CODE_HEADER = "X-Cutout-Sign-Up-Code"


class Outbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, to: str, subject: str, body: str, headers: dict[str, str] | None = None) -> Path:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = SENDER, to, subject
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(body)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{datetime.now().strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(4)}.eml"
        temporary = self.folder / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(message.as_bytes(policy=email.policy.SMTP))
        final = self.folder / name
        temporary.rename(final)
        return final

    def sweep(self, now: datetime, max_age: timedelta) -> int:
        """Deletes messages older than `max_age` (by file time); returns how many."""
        if not self.folder.is_dir():
            return 0
        cutoff = (now - max_age).timestamp()
        removed = 0
        for path in self.folder.glob("*.eml"):
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def messages_to(folder: Path, to: str) -> list[EmailMessage]:
    """The messages in an outbox for one address, oldest first."""
    parser = BytesParser(policy=email.policy.default)
    found = []
    for path in sorted(folder.glob("*.eml")) if folder.is_dir() else ():
        message = parser.parsebytes(path.read_bytes())
        if message["To"] == to:
            found.append(message)
    return found  # type: ignore[return-value]


def latest_code(folder: Path, to: str) -> str | None:
    """The newest sign-up code sent to `to` (the normalised address), if any."""
    for message in reversed(messages_to(folder, to)):
        if message[CODE_HEADER]:
            return str(message[CODE_HEADER])
    return None
