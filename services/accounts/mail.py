"""E-mails to account holders (sign-up codes, notices), delivered out of band.

Two ways, one interface (`send`, `sweep`):
- `Outbox` (the embedded default): one RFC 5322 message per file (stdlib `email`),
  owner-only, written atomically, for the developer, a test or a relay to pick up. Files
  older than MAIL_OUTBOX_HOURS are deleted by the accounts sweep (each holds an address).
- `SmtpRelay` (a cell with SMTP_HOST, as on Kubernetes): the region's mail relay over
  SMTP with STARTTLS required (stdlib `smtplib`); nothing is kept.
Nothing here logs an address or a code.
"""

from __future__ import annotations

import email.policy
import os
import secrets
import smtplib
import ssl
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Protocol

SENDER = "Cutout <no-reply@cutout.example.com>"
# The header that carries a sign-up code, so that tools and tests need not parse the text.
CODE_HEADER = "X-Cutout-Sign-Up-Code"


class Mailer(Protocol):
    def send(self, to: str, subject: str, body: str, headers: dict[str, str] | None = None) -> object: ...

    def sweep(self, now: datetime, max_age: timedelta) -> int: ...

    def erase(self, to: str) -> int: ...  # what is kept here for one address (an erasure)


class MailUnavailable(Exception):
    """The relay did not take the message (its text is not kept: it may quote the address)."""


def compose(to: str, subject: str, body: str, headers: dict[str, str] | None, sender: str = SENDER) -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message


class SmtpRelay:
    """Sends through an SMTP relay, STARTTLS required and the relay's certificate checked."""

    def __init__(
        self,
        host: str,
        port: int = 587,
        *,
        sender: str = SENDER,
        ca_file: Path | None = None,
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.username, self.password, self.timeout_s = username, password, timeout_s

    def send(self, to: str, subject: str, body: str, headers: dict[str, str] | None = None) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as relay:
                relay.starttls(context=self.context)  # refuses a relay without STARTTLS
                if self.username:
                    relay.login(self.username, self.password)
                relay.send_message(compose(to, subject, body, headers, self.sender))
        except (OSError, smtplib.SMTPException) as error:
            raise MailUnavailable(type(error).__name__) from None

    def sweep(self, now: datetime, max_age: timedelta) -> int:
        return 0  # nothing is kept here

    def erase(self, to: str) -> int:
        return 0  # nothing is kept here


class Outbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def send(self, to: str, subject: str, body: str, headers: dict[str, str] | None = None) -> Path:
        message = compose(to, subject, body, headers)
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

    def erase(self, to: str) -> int:
        """Deletes every message to `to` (an erased account's address); returns how many."""
        parser = BytesParser(policy=email.policy.default)
        removed = 0
        for path in self.folder.glob("*.eml") if self.folder.is_dir() else ():
            try:
                if parser.parsebytes(path.read_bytes())["To"] == to:
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
