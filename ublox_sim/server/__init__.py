"""The game server: FastAPI on the Engine (``pip install 'ublox-sim[server]'``).

``create_app(home, config=ServerConfig(...))`` gives an ASGI app to run under any
ASGI server; ``serve(...)`` runs it under uvicorn on a socket it binds first.
The layout: ``routes`` (the table of operations, one entry each: the OpenAPI
document's source), ``operation`` (what an entry is, and the one handler that runs
any of them, idempotent or not), ``models`` (bodies, and responses derived from the
Engine's views), ``receipts`` (the only store rows the server builds), ``auth``,
``idempotency``, ``guard`` (body, method and origin limits), ``errors``, ``metrics``,
``live`` (wall-clock ticks, scenarios), ``forward`` (several servers: a play goes to
its world's lease holder), ``heatmap`` and ``event_socket``.
"""

from __future__ import annotations

from .app import LOCAL_HOSTS, ServerConfig, create_app
from .run import PortBusy, bind, serve

__all__ = ["LOCAL_HOSTS", "PortBusy", "ServerConfig", "bind", "create_app", "serve"]
