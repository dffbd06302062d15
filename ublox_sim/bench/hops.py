"""How long the path of one ``buy_pts`` is: event-loop iterations and ``ublox_sim`` frames.

    python -m ublox_sim.bench.hops

A warm engine on an idle machine; frames counts every call and coroutine resumption in
a ``ublox_sim`` module (both threads), so it measures the path, not the machine. Quoted
in ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
from datetime import timedelta
from decimal import Decimal
from types import FrameType
from typing import Any

import ublox_sim
from ublox_sim import Engine, SimClock


async def measure() -> tuple[int, int]:
    with tempfile.TemporaryDirectory() as home:
        async with Engine.open(home, seed=1, clock=SimClock()) as engine:
            await engine.register_player("alice", usd_obbba=Decimal(1000))
            await engine.register_player("bob", usd_obbba=Decimal(1000))
            await engine.launch_pto(
                pto_id="p",
                game_name="g",
                creator_id="bob",
                atu_required=10,
                pts_offered=100,
                price_per_pts=Decimal(1),
                funding_deadline=timedelta(days=1),
            )
            await engine.buy_pts("alice", "p", 1)  # warm
            loop: Any = asyncio.get_running_loop()
            iterations = frames = 0
            run_once = loop._run_once

            def counting() -> None:
                nonlocal iterations
                iterations += 1
                run_once()

            root = ublox_sim.__path__[0]

            def profile(frame: FrameType, event: str, arg: object) -> None:
                nonlocal frames
                if event == "call" and frame.f_code.co_filename.startswith(root):
                    frames += 1

            loop._run_once = counting
            sys.setprofile(profile)
            threading.setprofile(profile)
            try:
                await engine.buy_pts("alice", "p", 1)
            finally:
                sys.setprofile(None)
                threading.setprofile(None)
                loop._run_once = run_once
            return iterations, frames


if __name__ == "__main__":
    turns, entered = asyncio.run(measure())
    print(f"one buy_pts: {turns} event-loop iterations, {entered} ublox_sim frames entered")
