"""The end-of-run summary on a terminal (rich tables)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from ..core.money import USD, XUSD, format_amount
from ..store.home import Home
from ..store.open import PgStore
from .runner import RunReport

# Said under the PTO table when a creator's last spend went past the requirement.
ATU_OVERSHOOT_NOTE = (
    "ATU (+N): the creator's last spend went N past atu_required; "
    "it completed the PTO and is recorded as spent"
)


def already_finished(report: RunReport) -> bool:
    """``--resume`` found the run complete: it ran no tick."""
    return report.resumed_from is not None and report.resumed_from >= report.total_ticks


def money(value: Any) -> str:
    """Major units with exactly two decimals, whatever form the amount came in."""
    return format_amount(value)


def atu(spent: int, required: int) -> str:
    over = spent - required
    return f"{spent}/{required}" + (f" (+{over})" if over > 0 else "")


def counts(by_key: dict[str, int]) -> str:
    """``{'completed': 2, 'failed': 1}`` as ``completed 2, failed 1``."""
    return ", ".join(f"{key} {value}" for key, value in sorted(by_key.items())) or "none"


def print_report(report: RunReport, home: Home | PgStore, console: Console) -> None:
    where = home.root if isinstance(home, Home) else home
    head = f"[bold]{report.name}[/bold] (seed {report.seed})"
    if already_finished(report):
        head += f": this run had already finished (tick {report.total_ticks}); nothing to resume"
    elif report.resumed_from is not None:
        head += f", resumed at tick {report.resumed_from}"
    console.print(head)
    # The game's name goes under its id: one column fewer keeps ids whole at 80 columns.
    ptos = Table(title="PTOs")
    for name in ("PTO", "status", "funding", "PTS", "ATU", "aci", "xUSD pool"):
        ptos.add_column(name, overflow="fold")  # wrap, never cut an id with "…"
    overshoot = False
    for p in report.ptos:
        overshoot = overshoot or p["atu_spent"] > p["atu_required"]
        ptos.add_row(
            f"{p['pto_id']}\n[dim]{p['game_name']}[/dim]",
            p["status"],
            f"{money(p['funding_raised'])} / {money(p['funding_goal'])}",
            f"{p['pts_sold']}/{p['pts_offered']}",
            atu(p["atu_spent"], p["atu_required"]),
            f"{p['aci_coherence_score']:.3f}",
            money(p["xUSD_pool"]),
        )
    if overshoot:
        ptos.caption = ATU_OVERSHOOT_NOTE
    console.print(ptos)
    top = Table("player", XUSD, USD, "phase locks", "τₖ", title=f"Top players by {XUSD}")
    for p in report.top_players:
        top.add_row(
            p["player_id"],
            money(p["xUSD_balance"]),
            money(p["usd_obbba_balance"]),
            str(p["phase_locks_count"]),
            f"{p['tau_k']:.2f}",
        )
    console.print(top)
    t = report.totals
    console.print(
        f"players {t['players']['count']}, PTOs {t['ptos']['count']} "
        f"({counts(t['ptos']['by_status'])}), transactions {t['transactions']['count']}, "
        f"sessions {t['play_sessions']['count']}, "
        f"xUSD composed {money(t['play_sessions']['xUSD_earned_total'])}"
    )
    console.print(f"operations: {counts(report.outcomes)}")
    if already_finished(report):
        console.print(f"store: {where}")
        return
    console.print(
        f"{report.ticks_run} ticks in {report.wall_seconds:.2f} s "
        f"({report.ticks_per_second:.1f} ticks/s); store: {where}"
    )
