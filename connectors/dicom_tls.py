"""TLS for the hub's DICOM associations (PS3.15 Annex B "secure transport").

Listener side: :func:`start_association_server` runs pynetdicom's threaded
association server with the TLS handshake moved off the accept loop.
pynetdicom's own ``ssl_context`` wraps each accepted socket *in the thread
that accepts*, with no timeout, so one client that connects and stays silent
would stop the whole listener; here the handshake happens in the
connection's own thread, bounded by the ACSE timeout, and a failed handshake
(a plain-TCP client, an untrusted certificate) closes only that connection.

Client side: :func:`tls_args` turns a destination's ``tls:`` block into
pynetdicom's ``tls_args`` for :meth:`AE.associate`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from typing import cast

from pynetdicom import AE
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from connectors.tls_config import ClientTLSConfig, client_ssl_context

__all__ = ["TLSAssociationServer", "start_association_server", "tls_args"]

log = logging.getLogger(__name__)


class TLSAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server; with a context, TLS is negotiated per connection thread."""

    tls_context: ssl.SSLContext | None = None
    handshake_timeout: float = 30.0

    def finish_request(  # type: ignore[override]
        self, request: socket.socket, client_address: tuple[str, int]
    ) -> None:
        """Handshake (in this connection's thread), then serve the association."""
        if self.tls_context is not None:
            try:
                request.settimeout(self.handshake_timeout)
                request = self.tls_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as exc:  # ssl.SSLError, timeout, peer gone
                log.warning(
                    "DICOM TLS handshake with %s failed: %s",
                    client_address[0], _reason(exc),
                )  # fmt: skip
                with contextlib.suppress(OSError):
                    request.close()
                return
        super().finish_request(request, client_address)


def start_association_server(
    ae: AE,
    address: tuple[str, int],
    handlers: list[EventHandlerType],
    tls_context: ssl.SSLContext | None,
) -> TLSAssociationServer:
    """Serve ``ae`` on ``address`` in background threads (like ``start_server(block=False)``)."""
    server = cast(
        TLSAssociationServer,
        ae.make_server(address, evt_handlers=handlers, server_class=TLSAssociationServer),
    )
    server.tls_context = tls_context
    server.handshake_timeout = ae.acse_timeout or 30.0
    thread = threading.Thread(
        target=server.serve_forever, name=f"DicomListener:{address[1]}", daemon=True
    )
    thread.start()
    # AssociationServer.shutdown() removes itself from this list.
    ae._servers.append(server)
    return server


def tls_args(tls: ClientTLSConfig | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for a client ``tls:`` block; None without one."""
    if tls is None:
        return None
    return client_ssl_context(tls, "DICOM"), tls.server_hostname or host


def _reason(exc: BaseException) -> str:
    """Why a handshake failed, e.g. 'SSLError: WRONG_VERSION_NUMBER' (no peer data quoted)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__}: {exc.reason}"
    return type(exc).__name__
