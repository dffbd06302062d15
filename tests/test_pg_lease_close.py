"""Closing the world leases when their connection is lost and the database's host has
gone dark (connections accepted, never answered): ``aclose`` does not connect again
(asyncpg's connect would wait its 60 s default), the leases are left to expire. The dark
host is a real TCP relay in front of PostgreSQL that stops relaying, not a mock."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import anyio
import pytest

from ublox_sim.core.clock import SimClock
from ublox_sim.engine import Engine
from ublox_sim.store.postgres.lease import WorldLeases

pytestmark = pytest.mark.anyio


class Relay:
    """A TCP relay to ``host:port`` that can go dark: it drops every relayed connection
    and accepts new ones without ever answering them."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.dark = False
        self.accepted_in_the_dark = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.dark:
            self.accepted_in_the_dark += 1
            try:
                await reader.read()  # never answers; ends when the client hangs up
            except OSError:
                pass
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.append(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass  # dropped (gone dark)
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def go_dark(self) -> None:
        self.dark = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def aclose(self) -> None:
        self.go_dark()
        if self._server is not None:
            self._server.close()


async def test_closing_leases_whose_host_went_dark_does_not_reconnect(pg_url: str) -> None:
    async with Engine.open(store=pg_url, clock=SimClock(), shared=False):
        pass  # the schema
    url = urlsplit(pg_url)
    assert url.hostname is not None and url.port is not None
    relay = Relay(url.hostname, url.port)
    port = await relay.start()
    through_relay = urlunsplit(url._replace(netloc=f"{url.username}@127.0.0.1:{port}"))
    leases = WorldLeases(through_relay, ttl=5, clock=SimClock(), holder="A")
    await leases.start()
    try:
        assert await leases.holders() == {}
        lost = asyncio.Event()
        leases._conn.add_termination_listener(lambda _conn: lost.set())
        relay.go_dark()
        with anyio.fail_after(30):  # a hang's bound (connect's default is 60 s)
            await lost.wait()  # asyncpg saw the connection drop
            assert leases._conn.is_closed()
            await leases.aclose()
        assert relay.accepted_in_the_dark == 0  # it never tried to connect again
    finally:
        await relay.aclose()
