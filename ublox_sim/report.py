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
    # The game's name goes under its id: one column fewer keeps ids whole at 80 columns.
    ptos = Table(title="PTOs")
    for name in ("PTO", "status", "funding", "PTS", "ATU", "aci", "xUSD pool"):
        ptos.add_column(name, overflow="fold")  # wrap, never cut an id with "…"
    for p in report.ptos:
        ptos.add_row(
            f"{p['pto_id']}\n[dim]{p['game_name']}[/dim]",
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
