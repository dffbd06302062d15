"""Several servers on one database: a play is answered by whichever server it reaches.

A session steps the world, so only the process holding the world's lease plays it
(``store.postgres.lease``); elsewhere the engine refuses it with ``WorldLeased`` and
changes nothing. A server then sends the same request (method, path, body,
``Authorization``, ``Idempotency-Key``) to the address the holder advertised with its
lease (``serve --advertise URL``) and relays its answer, status, body and headers. The
token signing secret and the idempotency keys are shared by every process, so the holder
authenticates and deduplicates the request exactly as the first server would have.

It is forwarded once: a request already forwarded that meets ``WorldLeased`` again (the
lease moved meanwhile) is refused with 503 and ``Retry-After``, as it is when the holder
advertises no address (an embedded engine, or a server without ``--advertise``) or
cannot be reached (it died: its lease expires within the TTL and the next play here
takes the world over from the last committed state).
"""

from __future__ import annotations

from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response

from ..core.errors import WorldLeased
from ..core.logsetup import get_logger

log = get_logger(__name__)

FORWARDED = "x-ublox-forwarded-by"  # on a forwarded request: the forwarding server
SENT = ("authorization", "content-type", "idempotency-key")
RELAYED = ("content-type", "idempotent-replayed", "retry-after", "www-authenticate")
TIMEOUT = httpx.Timeout(60.0, connect=5.0)  # a play queued behind a hot world's batch


class Forwarder:
    """Forwards a request refused with ``WorldLeased`` to the world's lease holder."""

    def __init__(self, leases: Any) -> None:
        self.leases = leases  # store.postgres.lease.WorldLeases
        # The holders' addresses are inside the cluster: no proxy from the environment.
        self.client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
        self.forwarded = 0  # requests answered by another process

    async def aclose(self) -> None:
        await self.client.aclose()

    async def relay(self, request: Request, refused: WorldLeased) -> Response:
        """The holder's answer to ``request``, or ``refused`` raised again when it cannot
        be asked (see the module docstring)."""
        if FORWARDED in request.headers:
            raise refused
        address = await self.leases.address_of(refused.pto_id)
        if not address or address == self.leases.address:
            raise refused
        url = address.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        headers = {name: request.headers[name] for name in SENT if name in request.headers}
        headers[FORWARDED] = self.leases.address or self.leases.holder
        try:
            answer = await self.client.request(
                request.method, url, content=await request.body(), headers=headers
            )
        except httpx.HTTPError as exc:
            log.warning("server.forward_failed", pto_id=refused.pto_id, to=address, error=repr(exc))
            raise refused from None
        self.forwarded += 1
        kept = {name: answer.headers[name] for name in RELAYED if name in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=kept)
