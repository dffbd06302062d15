"""A hostile HTTP client gets a 4xx JSON error, never a 5xx, a hang or a plain-text page.

Each crash reported against the first server is here as a regression test, against
the real server process (``ublox-sim serve``) over real sockets: nested JSON, far
deadlines, a 100 MB body, ``text/plain`` JSON from a foreign Origin, ``true`` as an
amount, a body announced and never sent, a binary WebSocket frame.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import OPERATOR, LiveServer, deadline_in, error_code
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ublox_sim.store.verify import verify_store


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.extra_args += ["--read-timeout", "1"]
    live.start()
    try:
        yield live
    finally:
        if live.proc is not None:
            live.stop()


def client(server: LiveServer, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=20, trust_env=False, headers={**OPERATOR, **headers}
    )


def pto(pto_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "pto_id": pto_id,
        "game_name": "G",
        "creator_id": "maker",
        "atu_required": 1,
        "pts_offered": 5,
        "price_per_pts": "1",
        "funding_deadline": deadline_in(7),
        **overrides,
    }


def no_tracebacks(server: LiveServer) -> None:
    log = server.output()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-4000:]


def test_each_reported_crash_is_a_4xx_json_error_and_changes_nothing(server: LiveServer) -> None:
    with client(server) as http:
        assert (
            http.post("/api/players", json={"player_id": "maker", "usd_obbba": "10"}).status_code
            == 201
        )
        before = http.get("/api/stats").json()["players"]
        nested = b"[" * 1000 + b"]" * 1000
        for path in ("/api/players", "/api/players/maker/deposit", "/api/ptos", "/api/backups"):
            r = http.post(path, content=nested, headers={"content-type": "application/json"})
            assert r.status_code == 422 and error_code(r) == "invalid_input", (path, r.text)
        for far in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
            r = http.post("/api/ptos", json=pto("far", funding_deadline=far))
            assert r.status_code == 409 and error_code(r) == "invalid_deadline", r.text
        for amount in (True, False, " 5 ", 5.5, None, [5], "1e3"):
            r = http.post("/api/players/maker/deposit", json={"amount": amount})
            assert r.status_code == 422 and error_code(r) == "invalid_input", (amount, r.text)
        # A "simple" cross-site POST: text/plain JSON from another page's Origin.
        r = http.post(
            "/api/players",
            content=b'{"player_id": "csrf", "usd_obbba": "999"}',
            headers={"content-type": "text/plain", "origin": "http://evil.example"},
        )
        assert r.status_code == 403 and error_code(r) == "forbidden_origin"
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            r = http.post(
                "/api/players/maker/deposit",
                content=b'{"amount": "5"}',
                headers={"content-type": kind},
            )
            assert r.status_code == 415 and error_code(r) == "unsupported_media_type", kind
        # DNS rebinding: a Host this server was not configured for.
        r = http.get("/api/stats", headers={"host": "evil.example"})
        assert r.status_code == 400 and error_code(r) == "invalid_host", r.text
        # Ids that could not be addressed are refused at creation.
        for bad in ("a/b", "a b", "../x", "é", ""):
            r = http.post("/api/players", json={"player_id": bad})
            assert r.status_code == 422, (bad, r.text)
        assert http.get("/api/stats").json()["players"] == before
        # The framework's own errors speak the same JSON, with a complete Allow.
        r = http.get("/no/such/route")
        assert r.status_code == 404 and error_code(r) == "not_found"
        r = http.put("/api/players")
        assert r.status_code == 405 and error_code(r) == "method_not_allowed"
        assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
        r = http.options("/api/players")
        assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert server.stop() == 0
    no_tracebacks(server)
    assert verify_store(server.home) == []


def test_repeated_json_keys_are_refused_and_move_nothing(server: LiveServer) -> None:
    with client(server) as http:
        r = http.post("/api/players", json={"player_id": "maker", "usd_obbba": "10"})
        assert r.status_code == 201
        for body in (
            b'{"amount":"1","amount":"99999"}',
            b'{"amount":"1","x":{"a":1,"a":2}}',  # nested objects too
        ):
            r = http.post(
                "/api/players/maker/deposit",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert r.status_code == 422 and error_code(r) == "invalid_input", r.text
            assert "repeats the key" in r.json()["error"]["message"]
        assert http.get("/api/players/maker").json()["usd_obbba_balance"] == "10.00"
    assert server.stop() == 0
    no_tracebacks(server)


def test_a_422_lists_ten_problems_and_counts_the_rest(server: LiveServer) -> None:
    unknown = {f"k{i:05d}": 0 for i in range(20_000)}
    with client(server) as http:
        r = http.post("/api/players", json={"player_id": "p", **unknown})
        assert r.status_code == 422 and error_code(r) == "invalid_input", r.text[:500]
        message = r.json()["error"]["message"]
        assert message.count("; ") == 10 and message.endswith("; and 19990 more"), message
        assert len(r.content) < 2000
    assert server.stop() == 0


def test_head_answers_wherever_get_does_without_a_body(server: LiveServer) -> None:
    with client(server) as http:
        for path in ("/healthz", "/api/ptos", "/api/players", "/"):
            got, head = http.get(path), http.head(path)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
        # HEAD where only POST exists is a 405 whose Allow names no HEAD, and no body.
        r = http.head("/api/players/nobody/deposit")
        assert r.status_code == 405 and r.content == b""
        assert r.headers["allow"] == "OPTIONS, POST"
    assert server.stop() == 0
    no_tracebacks(server)


def raw_request(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(head)
    return sock


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_100_mb_body_is_refused_without_being_read(server: LiveServer) -> None:
    auth = f"Authorization: {OPERATOR['Authorization']}\r\n".encode()
    # Announced: refused from the headers alone (nothing of the body was sent).
    with raw_request(
        server.port,
        b"POST /api/players HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n",
    ) as sock:
        assert read_status(sock) == 413
    # Streamed without a length: refused once the cap is passed, long before 100 MB.
    chunk = b" " * 65536
    sent = 0
    with raw_request(
        server.port,
        b"POST /api/players HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    ) as sock:
        sock.setblocking(False)
        answered = b""
        while sent < 100 * 2**20 and not answered:
            try:
                answered = sock.recv(4096)
            except BlockingIOError:
                pass
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            except BlockingIOError:
                time.sleep(0.001)  # the server stopped reading: wait for its answer
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.setblocking(True)
        answered += b"" if answered else sock.recv(4096)
        assert answered.startswith(b"HTTP/1.1 413"), answered[:200]
    assert sent < 16 * 2**20, sent  # the 1 MiB cap plus socket buffers, not 100 MB
    no_tracebacks(server)


def test_a_body_announced_and_never_sent_gets_408_not_a_hang(server: LiveServer) -> None:
    auth = f"Authorization: {OPERATOR['Authorization']}\r\n".encode()
    with raw_request(
        server.port,
        b"POST /api/players HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
    ) as sock:
        assert read_status(sock) == 408  # the server's --read-timeout (1 s here)
    with client(server) as http:
        assert http.get("/healthz").json() == {
            "status": "ok",
            "store_open": True,
            "accepting_writes": True,
        }


@pytest.mark.asyncio
async def test_a_binary_websocket_frame_is_ignored_and_the_stream_goes_on(
    server: LiveServer,
) -> None:
    async with asyncio.timeout(120):
        async with connect(server.ws_url) as ws:
            await ws.send(b"\x00\x01binary")
            await ws.send("text is ignored too")
            async with httpx.AsyncClient(
                base_url=server.url, headers=OPERATOR, trust_env=False
            ) as http:
                r = await http.post("/api/players", json={"player_id": "after", "usd_obbba": "1"})
                assert r.status_code == 201
            event = json.loads(await ws.recv())
            assert (event["kind"], event["player_id"]) == ("player_registered", "after")
    assert server.stop() == 0
    no_tracebacks(server)


@pytest.mark.asyncio
async def test_an_invalid_utf8_text_frame_closes_1007_with_one_log_line(
    server: LiveServer,
) -> None:
    async with asyncio.timeout(120):
        for _ in range(3):
            async with connect(server.ws_url, proxy=None) as ws:
                # A text frame whose bytes are not UTF-8, below the client library's checks.
                ws.protocol.send_text(b"\xff\xfe")
                ws.send_data()
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 1007
    assert server.stop() == 0
    log = server.output()
    assert log.count("Invalid UTF-8 sequence received from client.") == 3, log
    no_tracebacks(server)


def test_metrics_speak_prometheus_and_count_the_work(server: LiveServer) -> None:
    with client(server) as http:
        for k in range(3):
            assert (
                http.post("/api/players", json={"player_id": f"m{k}", "usd_obbba": "1"}).status_code
                == 201
            )
        text = http.get("/metrics").text
        # Registered players are not active: an actor is activated by its first message.
        assert 'ublox_active_actors{kind="player"} 0.0' in text
        for k in range(2):
            assert http.post(f"/api/players/m{k}/deposit", json={"amount": "1"}).status_code == 200
        text = http.get("/metrics").text
    for name in (
        "ublox_http_request_duration_seconds_bucket",
        "ublox_commit_duration_seconds_count",
        "ublox_acked_units",
        "ublox_active_actors",
        "ublox_mailbox_depth_max",
        "ublox_events_dropped_total",
    ):
        assert name in text, name
    assert 'ublox_active_actors{kind="player"} 2.0' in text
    assert 'route="/api/players"' in text
    acked = [line for line in text.splitlines() if line.startswith("ublox_acked_units ")]
    assert float(acked[0].split()[1]) >= 3


def test_without_a_scenario_deadlines_fire_on_the_wall_clock(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.extra_args = ["--tick", "0.2"]
    live.start()
    try:
        with client(live) as http:
            http.post("/api/players", json={"player_id": "maker", "usd_obbba": "0"})
            http.post("/api/players", json={"player_id": "fan", "usd_obbba": "10"})
            r = http.post("/api/ptos", json=pto("soon", funding_deadline=deadline_in(2 / 86400)))
            assert r.status_code == 201, r.text
            assert (
                http.post(
                    "/api/ptos/soon/shares", json={"player_id": "fan", "hours": 2}
                ).status_code
                == 201
            )
            aci = r.json()["aci_coherence_score"]
            # Nobody calls advance: the server's own ticks fail it and refund the fan.
            for _ in range(300):
                if http.get("/api/ptos/soon").json()["status"] == "failed":
                    break
                time.sleep(0.05)
            final = http.get("/api/ptos/soon").json()
            assert final["status"] == "failed"
            assert final["aci_coherence_score"] != aci  # the world stepped too
            assert http.get("/api/players/fan").json()["usd_obbba_balance"] == "10.00"
        assert live.stop() == 0
    finally:
        live.kill()
    assert verify_store(live.home) == []


def serve_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ublox_sim", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_a_busy_port_is_one_line_exit_4_and_creates_no_home(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = serve_cli("--home", str(tmp_path / "new"), "--port", str(port))
    assert run.returncode == 4, run
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
    assert "serving" not in run.stdout
    assert not (tmp_path / "new").exists()


def test_a_port_out_of_range_is_a_usage_error_not_a_traceback(tmp_path: Path) -> None:
    for port in ("99999", "-1"):
        run = serve_cli("--home", str(tmp_path / "new"), "--port", port)
        assert run.returncode == 2, run
        assert "Traceback" not in run.stderr and "0<=x<=65535" in run.stderr, run.stderr
    assert not (tmp_path / "new").exists()


def test_an_allowed_host_adds_to_the_local_names_so_the_printed_url_answers(
    tmp_path: Path,
) -> None:
    live = LiveServer(tmp_path / "home", tmp_path / "server.log")
    live.extra_args += ["--allowed-host", "game.example"]
    live.start()
    try:
        with client(live) as http:
            assert http.get("/healthz").status_code == 200  # http://127.0.0.1:P/
            for host in ("game.example", "localhost", f"[::1]:{live.port}"):
                r = http.get("/healthz", headers={"host": host})
                assert r.status_code == 200, (host, r.text)
            r = http.get("/healthz", headers={"host": "evil.example"})
            assert r.status_code == 400 and error_code(r) == "invalid_host"
        assert live.stop() == 0
    finally:
        live.kill()


def test_serve_refuses_a_scenario_over_a_home_that_holds_a_store(tmp_path: Path) -> None:
    home = tmp_path / "home"
    live = LiveServer(home, tmp_path / "server.log")
    live.start()
    with client(live) as http:
        http.post("/api/players", json={"player_id": "someone", "usd_obbba": "1"})
    live.stop()
    scenario = Path(__file__).parent.parent / "scenarios" / "harmonic_caverns.yaml"
    run = serve_cli("--home", str(home), "--port", "0", "--scenario", str(scenario))
    assert run.returncode == 2, run
    assert "already holds a store" in run.stderr
    assert "serving" not in run.stdout


def test_serve_reports_a_scenario_error_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nseed: 1\nticks: -5\n")
    run = serve_cli("--home", str(tmp_path / "home"), "--port", "0", "--scenario", str(bad))
    assert run.returncode == 2, run
    assert f"{bad}:" in run.stderr and run.stderr.startswith("error:"), run.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.asyncio
async def test_cors_is_closed_unless_configured(tmp_path: Path) -> None:
    from ublox_sim.server import ServerConfig, create_app

    preflight = {
        "origin": "http://game.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    for origins, allowed in (((), False), (("http://game.example",), True)):
        config = ServerConfig(
            admin_key="k" * 32,
            allowed_hosts=("testserver",),
            cors_origins=origins,
            tick_seconds=None,
        )
        app = create_app(tmp_path / f"home{len(origins)}", config=config)
        async with app.api.router.lifespan_context(app.api):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                r = await http.options("/api/players", headers=preflight)
                assert (
                    r.headers.get("access-control-allow-origin") == "http://game.example"
                ) is allowed
                if allowed:
                    # A preflight from an origin not configured: the JSON error shape.
                    r = await http.options(
                        "/api/players", headers={**preflight, "origin": "http://evil.example"}
                    )
                    assert r.status_code == 400, r.text
                    assert r.json()["error"]["code"] == "cors_refused", r.text
                r = await http.post(
                    "/api/players",
                    json={"player_id": "x"},
                    headers={
                        "origin": "http://game.example",
                        "authorization": "Bearer " + "k" * 32,
                    },
                )
                assert r.status_code == (201 if allowed else 403), r.text


def serve_until_ready(home: Path) -> str:
    """Start `serve` without UBLOX_ADMIN_KEY, wait for "serving on", stop it; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "UBLOX_ADMIN_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ublox_sim", "serve", "--home", str(home), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "serving" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + rest
    return "".join(lines) + rest


def test_the_admin_key_is_generated_once_and_its_location_printed_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = serve_until_ready(home)
    key_file = home / "admin.key"
    assert f"admin key written to {key_file}" in first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key not in first  # the location, never the key itself
    second = serve_until_ready(home)
    assert "admin key" not in second and "serving" in second
    assert key_file.read_text().strip() == key


@pytest.mark.asyncio
async def test_an_unexpected_failure_is_a_json_500_without_details(tmp_path: Path) -> None:
    from ublox_sim.server import ServerConfig, create_app

    config = ServerConfig(admin_key="k" * 32, allowed_hosts=("testserver",), tick_seconds=None)
    app = create_app(tmp_path / "home", config=config)
    async with app.api.router.lifespan_context(app.api):
        engine = app.state.server.engine

        async def broken() -> None:
            raise RuntimeError("a bug with a secret inside: /etc/passwd")

        engine.stats = broken  # a real bug in a handler, not a UbloxError
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            r = await http.get("/api/stats")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal_error", "message": "internal error"}}
