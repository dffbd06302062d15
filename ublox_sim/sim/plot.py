"""Figures of a run's or a sweep's metrics, with matplotlib (the ``analysis`` extra).

``plot_run(home, out)``: ACI over time per world, funding curves (percent of goal)
with each world's deadline marked, and the players' xUSD at the end (from the run's
export). ``plot_sweep(sweep_dir, out)``: each final metric against the swept
parameter, the mean over seeds with its 95% band and every seed's value.
``plot_any(path, out)`` picks by what the folder holds. Each figure is written as PNG
and SVG, ``SIZE`` pixels (PNG) at ``DPI``.

matplotlib is imported, and its non-interactive Agg backend chosen, inside these
functions only: importing this module changes nothing.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from ..core.errors import InvalidInput
from ..core.money import CENTS_PER_UNIT, STORED_MAX_CENTS, to_cents
from . import metrics as M

SIZE: Final = (1000, 600)
"""Every figure's size in pixels (the PNG's width and height)."""
DPI: Final = 100
FORMATS: Final = ("png", "svg")

Row = dict[str, Any]

LABELS: Final = {
    "aci": "ACI (order parameter, 0-1)",
    "aci_mean": "mean ACI over worlds (0-1)",
    "local_coherence_mean": "mean local coherence over worlds (0-1)",
    "funding_raised_cents_mean": "mean funding raised per world (USD-OBBBA)",
    "pts_sold_mean": "mean PTS sold per world (hours)",
    "xusd_pool_cents_mean": "mean xUSD pool per world (xUSD)",
    "last_tick_sessions_mean": "mean sessions per world in the last tick",
    "last_tick_phase_locks_mean": "mean phase locks per world in the last tick",
    "last_tick_players_active": "players active in the last tick",
    "usd_obbba_total_cents": "USD-OBBBA held by players",
    "xusd_total_cents": "xUSD held by players",
    "xusd_gini": "Gini coefficient of xUSD (0-1)",
    "transactions": "ledger transactions",
    "refunded_cents": "USD-OBBBA refunded",
}


def _pyplot() -> Any:
    matplotlib = M._require("matplotlib")
    matplotlib.use("Agg")  # files only; never a window, whatever the environment says
    import matplotlib.pyplot as plt

    return plt


def _figure(plt: Any, series: int = 1) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(SIZE[0] / DPI, SIZE[1] / DPI), dpi=DPI, layout="constrained")
    ax.grid(True, alpha=0.3)
    if series > 10:
        # Past ten lines the default cycle repeats a colour for two worlds.
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    return fig, ax


def _save(plt: Any, fig: Any, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        # SVG text stays text; no timestamps, so the same data gives the same file.
        fig.savefig(path, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(path)
    plt.close(fig)
    return paths


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _legend(ax: Any, count: int) -> None:
    """Outside the axes on the right, in as many columns as it takes to fit the height
    (inside, where it covers least, for one or two entries)."""
    if count == 0:
        return
    if count <= 2:
        ax.legend(loc="best", fontsize="small")
        return
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        ncol=max(1, math.ceil(count / 20)),
        frameon=False,
    )


def _worlds(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in rows:
        if row["entity"] != M.GLOBAL:
            out.setdefault(row["entity"], []).append(row)
    return dict(sorted(out.items()))


def plot_run(home: Path, out: Path) -> list[Path]:
    """The run's figures in ``out``; returns the files written."""
    from ..store.home import Home

    rows = M.read_metrics(Home(home))
    plt = _pyplot()
    worlds = _worlds(rows)
    written: list[Path] = []
    name = _run_name(home)

    if "aci" in rows[0]:
        fig, ax = _figure(plt, len(worlds))
        for world, series in worlds.items():
            ax.plot([r["hour"] for r in series], [r["aci"] for r in series], label=world, lw=1.2)
        ax.set(
            title=f"{name}: ACI per world over time",
            xlabel="simulated time (hours since start)",
            ylabel=LABELS["aci"],
            ylim=(0, 1.02),
        )
        _legend(ax, len(worlds))
        written += _save(plt, fig, out, "aci_over_time")

    if "funding_raised_cents" in rows[0]:
        fig, ax = _figure(plt, len(worlds))
        for world, series in worlds.items():
            goal = series[-1]["funding_goal_cents"] or 0
            if not goal:
                continue
            hours = [r["hour"] for r in series]
            share = [r["funding_raised_cents"] / goal for r in series]
            (line,) = ax.plot(hours, share, label=world, lw=1.2)
            deadline = series[-1]["deadline_hour"]
            if deadline is not None:
                # On the curve, in its colour: where the world stood when its deadline
                # was checked (the first sample at or after it; ticks move the clock last).
                after = [s for h, s in zip(hours, share, strict=True) if h >= deadline]
                ax.plot(
                    [deadline],
                    [after[0] if after else share[-1]],
                    marker="v",
                    ms=8,
                    color=line.get_color(),
                    markeredgecolor="black",
                    ls="none",
                )
        ax.plot(
            [], [], marker="v", color="grey", markeredgecolor="black", ls="none", label="deadline"
        )
        ax.axhline(1.0, color="black", lw=1, ls="--", label="goal")
        ax.yaxis.set_major_formatter(_percent())
        ax.set(
            title=f"{name}: funding raised per world (▼ its funding deadline)",
            xlabel="simulated time (hours since start)",
            ylabel="funding raised (share of goal)",
        )
        ax.set_ylim(bottom=0)
        _legend(ax, len(worlds) + 2)
        written += _save(plt, fig, out, "funding_curves")

    balances = _final_xusd(home)
    if balances is not None:
        fig, ax = _figure(plt)
        holders = [b for b in balances if b > 0]
        ax.hist(holders or [0.0], bins=40, color="tab:purple", alpha=0.85)
        gini = M.gini([to_cents(b, limit=STORED_MAX_CENTS) for b in balances])
        ax.set(
            title=(
                f"{name}: xUSD per player at the end ({len(holders)} of {len(balances)} "
                f"players hold any; Gini {gini:.2f} over all)"
            ),
            xlabel="xUSD balance (xUSD)",
            ylabel="players",
        )
        written += _save(plt, fig, out, "xusd_distribution")
    return written


def _run_name(home: Path) -> str:
    export = home / "export.json"
    if export.is_file():
        run = json.loads(export.read_text(encoding="utf-8")).get("run") or {}
        if run.get("name"):
            return f"{run['name']} (seed {run.get('seed')})"
    return home.name


def _final_xusd(home: Path) -> list[float] | None:
    """Every player's xUSD at the end, from the run's export (None before it finished)."""
    export = home / "export.json"
    if not export.is_file():
        return None
    players = json.loads(export.read_text(encoding="utf-8")).get("players", [])
    return [float(p["xUSD_balance"]) for p in players]


def _read_csv(path: Path) -> list[Row]:
    if not path.is_file():
        raise InvalidInput(f"{path}: missing; run the sweep (again) to write it")
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def plot_sweep(sweep_dir: Path, out: Path, metrics: Sequence[str] | None = None) -> list[Path]:
    """Each final metric (or those named) against the first swept parameter; one line
    and band per value of the other parameters. Returns the files written."""
    spec = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
    keys: list[str] = spec["parameters"]
    if not keys:
        raise InvalidInput(f"{sweep_dir}: the sweep varies no parameter (--set) to plot against")
    summary = _read_csv(sweep_dir / "summary.csv")
    finals = _read_csv(sweep_dir / "final.csv")
    if not summary:
        raise InvalidInput(f"{sweep_dir}: no cell finished; nothing to plot")
    x_key, others = keys[0], keys[1:]
    chosen = list(dict.fromkeys(r["metric"] for r in summary))
    if metrics is not None:
        chosen = [m for m in chosen if m in metrics]
    plt = _pyplot()
    written: list[Path] = []
    for metric in chosen:
        groups: dict[tuple[str, ...], list[Row]] = {}
        for row in summary:
            if row["metric"] == metric:
                groups.setdefault(tuple(row[k] for k in others), []).append(row)
        fig, ax = _figure(plt, len(groups))
        for combo, rows in groups.items():
            rows.sort(key=lambda r: _sortable(r[x_key]))
            xs = [_number(r[x_key]) for r in rows]
            numeric = all(isinstance(x, float) for x in xs)
            pos = xs if numeric else list(range(len(xs)))
            label = ", ".join(f"{k}={v}" for k, v in zip(others, combo, strict=True)) or "mean"
            scale = 1 / CENTS_PER_UNIT if metric.endswith(("_cents", "_cents_mean")) else 1.0
            mean = [float(r["mean"]) * scale for r in rows]
            (line,) = ax.plot(pos, mean, marker="o", label=f"{label} (95% band)")
            ax.fill_between(  # no band where one seed gave no interval (empty low, high)
                pos,
                [float(r["low"] or "nan") * scale for r in rows],
                [float(r["high"] or "nan") * scale for r in rows],
                color=line.get_color(),
                alpha=0.2,
            )
            where = {k: v for k, v in zip(others, combo, strict=True)}
            seeds = [
                f
                for f in finals
                if all(f[k] == v for k, v in where.items()) and f.get(metric) not in (None, "")
            ]
            index = {str(r[x_key]): p for r, p in zip(rows, pos, strict=True)}
            ax.scatter(
                [index[f[x_key]] for f in seeds if f[x_key] in index],
                [float(f[metric]) * scale for f in seeds if f[x_key] in index],
                s=10,
                color=line.get_color(),
                alpha=0.5,
            )
            if not numeric:
                ax.set_xticks(pos, [str(x) for x in xs])
        n = max((int(r["n"]) for r in summary if r["metric"] == metric), default=0)
        ax.set(
            # The column's name without its unit (the axis says it: cents are shown whole).
            title=(
                f"{metric.replace('_cents', '')} by {x_key}: mean of {n} seeds "
                "with its 95% interval, a dot per seed"
            ),
            xlabel=x_key,
            ylabel=LABELS.get(metric, metric),
        )
        _legend(ax, len(groups))
        written += _save(plt, fig, out, f"sweep_{metric}")
    return written


def _sortable(text: str) -> tuple[int, float, str]:
    value = _number(text)
    return (0, value, "") if isinstance(value, float) else (1, 0.0, str(value))


def plot_any(path: Path, out: Path | None = None) -> list[Path]:
    """A sweep's folder (``sweep.json``) or a run's home (``metrics/``): its figures in
    ``out`` (default ``PATH/plots``)."""
    target = out if out is not None else path / "plots"
    if (path / "sweep.json").is_file():
        return plot_sweep(path, target)
    if (path / M.SEGMENTS).is_dir():
        return plot_run(path, target)
    raise InvalidInput(
        f"{path} is neither a sweep's folder (sweep.json) nor a run's home with metrics "
        "(run it with --metrics)"
    )
