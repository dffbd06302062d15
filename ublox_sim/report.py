"""The end-of-run summary on a terminal (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .runner import RunReport
from .store import Home


def print_report(report: RunReport, home: Home, console: Console) -> None:
    head = f"[bold]{report.name}[/bold] (seed {report.seed})"
    if report.resumed_from is not None:
        head += f", resumed at tick {report.resumed_from}"
    console.print(head)
    ptos = Table("PTO", "game", "status", "funding", "PTS", "ATU", "aci", "xUSD pool", title="PTOs")
    for p in report.ptos:
        ptos.add_row(
            p["pto_id"],
            p["game_name"],
            p["status"],
            f"{p['funding_raised']} / {p['funding_goal']}",
            f"{p['pts_sold']}/{p['pts_offered']}",
            f"{p['atu_spent']}/{p['atu_required']}",
            f"{p['aci_coherence_score']:.3f}",
            p["xUSD_pool"],
        )
    console.print(ptos)
    top = Table("player", "xUSD", "USD-OBBBA", "phase locks", "τₖ", title="Top players by xUSD")
    for p in report.top_players:
        top.add_row(
            p["player_id"],
            p["xUSD_balance"],
            p["usd_obbba_balance"],
            str(p["phase_locks_count"]),
            f"{p['tau_k']:.2f}",
        )
    console.print(top)
    t = report.totals
    console.print(
        f"players {t['players']['count']}, PTOs {t['ptos']['count']} {t['ptos']['by_status']}, "
        f"transactions {t['transactions']['count']}, sessions {t['play_sessions']['count']}, "
        f"xUSD composed {t['play_sessions']['xUSD_earned_total']:.2f}"
    )
    outcomes = ", ".join(f"{k} {v}" for k, v in report.outcomes.items())
    console.print(f"operations: {outcomes}")
    console.print(
        f"{report.ticks_run} ticks in {report.wall_seconds:.2f} s "
        f"({report.ticks_per_second:.1f} ticks/s); store: {home.root}"
    )
