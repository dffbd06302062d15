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
takes the world over from the last committed state). A holder killed while it was
being asked gives the same 503: the play may have landed there or not, and a retry with
the same ``Idempotency-Key`` (on any server) replays it if it did, plays it once if not.

``/metrics`` counts the requests forwarded (by the holder's status) and the ones that
could not be (by reason: ``FAILURES``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, NoReturn

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
# Why a request refused with ``WorldLeased`` was not forwarded (then a 503 here).
FAILURES = (
    "already_forwarded",  # it came from another server: forwarded once, never twice
    "no_address",  # the holder advertises no address, or its lease has just expired
    "unreachable",  # the holder's address refused the connection (it is down)
    "timeout",  # no connection or no answer in time
    "connection_lost",  # the holder went away while it was being asked
)


class Forwarder:
    """Forwards a request refused with ``WorldLeased`` to the world's lease holder."""

    def __init__(self, leases: Any) -> None:
        self.leases = leases  # store.postgres.lease.WorldLeases
        # The holders' addresses are inside the cluster: no proxy from the environment.
        self.client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
        self.forwarded: Counter[int] = Counter()  # answered by the holder, by its status
        self.failed: Counter[str] = Counter()  # not forwarded, by reason (``FAILURES``)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def relay(self, request: Request, refused: WorldLeased) -> Response:
        """The holder's answer to ``request``, or ``refused`` raised again when it cannot
        be asked (see the module docstring)."""
        if FORWARDED in request.headers:
            self._refuse(refused, "already_forwarded")
        address = await self.leases.address_of(refused.pto_id)
        if not address or address == self.leases.address:
            self._refuse(refused, "no_address")
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
            self._refuse(refused, _reason(exc))
        self.forwarded[answer.status_code] += 1
        kept = {name: answer.headers[name] for name in RELAYED if name in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    def _refuse(self, refused: WorldLeased, reason: str) -> NoReturn:
        self.failed[reason] += 1
        raise refused from None


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "unreachable"
    return "connection_lost"
