"""Real peers for alert notifier tests: an SMTP server (aiosmtpd) and a webhook receiver."""

from __future__ import annotations

import email
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.hub_process import free_port

__all__ = ["Mailbox", "WebhookReceiver", "smtp_server", "webhook_server"]


@dataclass
class Mailbox:
    """What the SMTP server received."""

    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        content = envelope.original_content or b""
        self.messages.append(email.message_from_bytes(content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextmanager
def smtp_server(
    *, tls: tuple[Path, Path] | None = None, login: tuple[str, str] | None = None
) -> Iterator[Mailbox]:
    """An SMTP server on a free localhost port; with ``tls`` it requires STARTTLS, with
    ``login`` it requires that user and password."""
    mailbox = Mailbox(port=free_port())
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        options.update(tls_context=context, require_starttls=True)
    if login is not None:

        def authenticate(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and (data.login.decode(), data.password.decode()) == login
            )
            if ok:
                mailbox.logins.append(login[0])
            return AuthResult(success=ok, handled=False)

        options.update(authenticator=authenticate, auth_required=True)
    controller = Controller(mailbox, hostname="127.0.0.1", port=mailbox.port, **options)
    controller.start()
    try:
        yield mailbox
    finally:
        controller.stop()


@dataclass
class WebhookReceiver:
    """What the webhook endpoint received; ``status`` is what it answers (503: failing)."""

    url: str = ""
    status: int = 200
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    failures: int = 0


@contextmanager
def webhook_server() -> Iterator[WebhookReceiver]:
    """An HTTP server on a free localhost port recording the JSON POSTed to /hooks/alerts."""
    receiver = WebhookReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            if receiver.status >= 300 or self.path != "/hooks/alerts":
                receiver.failures += 1
                self.send_response(receiver.status if receiver.status >= 300 else 404)
            else:
                receiver.bodies.append(body)
                receiver.authorizations.append(self.headers.get("Authorization"))
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read what was received, not the access log."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
