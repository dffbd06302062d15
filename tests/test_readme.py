"""The documentation works as written: every ```python block of README.md and
scenarios/README.md runs as a script (in a temporary home, cwd and temp dir) and prints
what its comments say; every ``ublox-sim`` command line in a fenced block names real
commands and options; the concrete ones that start no server run and leave stores that
verify."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

import ublox_sim
from ublox_sim.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", ROOT / "scenarios" / "README.md")


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def fenced_blocks(doc: Path) -> list[Block]:
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        fence = re.match(r"^```(\S*)\s*$", line)
        if lang is None and fence:
            lang, start, body = fence.group(1), number, []
        elif lang is not None and line.startswith("```"):
            blocks.append(Block(doc, start, lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{doc}: a fence opened at line {start} is never closed"
    return blocks


BLOCKS = [block for doc in DOCS for block in fenced_blocks(doc)]
PYTHON = [b for b in BLOCKS if b.lang == "python"]

# What a block must print, keyed by a line that identifies it: (stdout, stderr) patterns.
# A block listed with no stderr pattern must leave stderr empty: the library is quiet.
EXPECTED: dict[str, tuple[list[str], list[str]]] = {
    'print("alice paid", token.purchase_price)': (
        [
            r"^alice paid 1000\.00$",
            r"^refused: .*25000\.00.*4000\.00",
            r"^failed: \['pto_harmonic_001'\] alice has 5000\.00$",
            r'^\{"kind": "player_registered", .*"player_id": "alice"',
            r'^\{"kind": "pto_launched", ',
            r'^\{"kind": "shares_bought", .*"price": "1000\.00"',
            r'^\{"kind": "pto_failed", .*"refunded": "1000\.00"',
        ],
        [],
    ),
    "logging.basicConfig(level=logging.INFO": (
        [],
        [r"^ublox_sim\.[\w.]+ INFO [\w.]*backup_created name='nightly' path="],
    ),
    "report = anyio.run(run_scenario, loaded, home)": (
        [r"^completed \{.*'buy': 2", r"two-friends-.*/export\.json$"],
        [],
    ),
    "with UbloxLocalStorage() as storage:": (
        [
            r"^1 backup\(s\)$",
            r"^True$",
            r"^\{'count': 1, 'volume': \{'investment/USD-OBBBA': 1000\.0\}\}$",
            r"/ublox-home/export\.json$",
        ],
        [],
    ),
}


def expected_for(block: Block) -> tuple[list[str], list[str]]:
    keys = [key for key in EXPECTED if key in block.text]
    assert len(keys) <= 1, f"{block.where}: matches several expectations {keys}"
    return EXPECTED[keys[0]] if keys else ([], [])


def isolated_env(tmp_path: Path) -> dict[str, str]:
    """Nothing a documented command does may touch the real ~/.ublox or /tmp."""
    for name in ("ublox-home", "user-home", "tmp"):
        (tmp_path / name).mkdir(exist_ok=True)
    return {
        **os.environ,
        "NO_COLOR": "1",
        "UBLOX_HOME": str(tmp_path / "ublox-home"),
        "HOME": str(tmp_path / "user-home"),
        "TMPDIR": str(tmp_path / "tmp"),
    }


def test_the_docs_have_the_python_blocks_this_file_expects() -> None:
    # Guards the extraction itself, and expectations left behind by an edited README.
    assert len(PYTHON) >= 4, [b.where for b in PYTHON]
    for key in EXPECTED:
        assert any(key in b.text for b in PYTHON), f"no python block contains {key!r}"


@pytest.mark.parametrize("block", PYTHON, ids=[b.where for b in PYTHON])
def test_every_python_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    script = cwd / "block.py"
    script.write_text(block.text, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=isolated_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, f"{block.where} failed:\n{proc.stdout}\n{proc.stderr}"
    out_patterns, err_patterns = expected_for(block)
    for pattern in out_patterns:
        assert re.search(pattern, proc.stdout, re.MULTILINE), (pattern, proc.stdout)
    if err_patterns:
        for pattern in err_patterns:
            assert re.search(pattern, proc.stderr, re.MULTILINE), (pattern, proc.stderr)
    else:
        assert proc.stderr == ""
    assert not (tmp_path / "user-home" / ".ublox").exists()


# -- the public API -------------------------------------------------------------------

# Backticked class-like names (`Engine`, `SimClock(start)`, `Engine.open`) in the docs that
# are not ublox_sim's.
NOT_OURS = {"Decimal", "Allow"}  # a Python type and an HTTP header


def test_every_class_the_docs_name_is_exported_from_the_package() -> None:
    named = {
        name
        for doc in DOCS
        for name in re.findall(
            r"`([A-Z][A-Za-z]*[a-z][A-Za-z]*)(?:[.(][^`]*)?`", doc.read_text(encoding="utf-8")
        )
    }
    assert named - NOT_OURS - set(ublox_sim.__all__) == set()
    assert {"Engine", "SimClock", "InsufficientFunds", "UbloxLocalStorage"} <= named


def test_every_name_in_all_resolves_and_is_listed_by_dir() -> None:
    for name in ublox_sim.__all__:
        assert getattr(ublox_sim, name) is not None, name
    assert set(ublox_sim.__all__) <= set(dir(ublox_sim))
    with pytest.raises(AttributeError):
        _ = ublox_sim.NoSuchName  # type: ignore[attr-defined]


def test_importing_the_package_is_light_and_changes_no_global_state() -> None:
    probe = (
        "import logging, sys\n"
        "import ublox_sim\n"
        "heavy = [m for m in ('numpy', 'aiosqlite', 'pydantic', 'yaml', 'structlog', 'anyio')"
        " if m in sys.modules]\n"
        "print(heavy, logging.getLogger().handlers, logging.getLogger('ublox_sim').handlers)\n"
        "from ublox_sim import *\n"
        "import structlog\n"
        "print(Engine.__name__, SimClock.__name__, structlog.is_configured())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == ["[] [] []", "Engine SimClock False"]


# -- command lines ---------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    block: Block
    words: tuple[str, ...]  # after "ublox-sim", comment removed
    exit_code: int  # 0, or what the line's comment documents ("# exit 2")

    @property
    def where(self) -> str:
        return f"{self.block.where}: ublox-sim {' '.join(self.words)}"


def command_lines() -> list[CommandLine]:
    found = []
    for block in BLOCKS:
        if block.lang == "python":
            continue
        for line in block.text.splitlines():
            command, _, comment = line.partition(" #")
            words = command.split()
            if words[:1] == ["$"]:  # a shell prompt
                words = words[1:]
            if words and (words[0] == "ublox-sim" or words[0].endswith("/ublox-sim")):
                documented = re.search(r"\bexit(?: code)? (\d)\b", comment)
                code = int(documented.group(1)) if documented else 0
                found.append(CommandLine(block, tuple(words[1:]), code))
    return found


LINES = command_lines()


def option_names(command: click.Command) -> set[str]:
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def commands_named(line: CommandLine) -> list[click.Command]:
    """The command (or the subcommands of a group) a documented line names."""
    ctx = click.Context(cli_main)
    words = [w for w in line.words if not w.startswith(("-", "["))]
    if not words or words[0] not in cli_main.list_commands(ctx):
        # A line of group options only (ublox-sim --version | --log-format ...), or a
        # first word that must then be a command.
        assert not words or line.words[0].startswith("-"), f"{line.where}: no such command"
        return []
    command = cli_main.get_command(ctx, words[0])
    assert command is not None
    if isinstance(command, click.Group):
        sub_ctx = click.Context(command)
        named = [w for w in words[1:] if w in command.list_commands(sub_ctx)]
        assert named, f"{line.where}: names none of {command.list_commands(sub_ctx)}"
        return [c for w in named if (c := command.get_command(sub_ctx, w)) is not None]
    return [command]


def test_the_docs_show_command_lines() -> None:
    assert len(LINES) >= 15, [line.where for line in LINES]


@pytest.mark.parametrize("line", LINES, ids=[line.where for line in LINES])
def test_every_documented_command_line_names_real_commands_and_options(
    line: CommandLine,
) -> None:
    commands = commands_named(line)
    known = option_names(cli_main).union(*(option_names(c) for c in commands))
    for word in line.words:
        option = word.strip("[]").split("=", 1)[0]
        if option.startswith("-") and option != "-":
            assert option in known, f"{line.where}: {option} is not an option here"


def runnable(line: CommandLine) -> bool:
    """A concrete line (no [OPTIONAL], a|b or PLACEHOLDER) that starts no server and is not
    a benchmark."""
    text = " ".join(line.words)
    if re.search(r"[\[\]|]", text) or any(re.fullmatch(r"[A-Z][A-Z.]*", w) for w in line.words):
        return False
    return not line.words or line.words[0] not in {"serve", "bench"}


# Documented runs are cut short here: the festival takes ~15 s and stress more, but the
# command line, the --set keys and the flags are exactly the documented ones.
CUTS = {
    "scenarios/festival.yaml": ("--set", "clock.ticks=1"),
    "scenarios/stress.yaml": (
        "--set",
        "clock.ticks=1",
        "--set",
        "cohorts.0.count=100",
        "--set",
        "pto_cohorts.0.count=2",
    ),
}


def test_the_concrete_documented_commands_run_and_their_stores_verify(tmp_path: Path) -> None:
    env = isolated_env(tmp_path)
    lines = [line for line in LINES if runnable(line)]
    assert len(lines) >= 4, [line.where for line in LINES]

    def ublox_sim(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ublox_sim", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    scratch = tmp_path / "scratch"  # documented /tmp paths (homes, exports) land here
    scratch.mkdir()
    for line in lines:
        args = [
            str(scratch / word.removeprefix("/tmp/")) if word.startswith("/tmp/") else word
            for word in line.words
        ]
        for scenario, cut in CUTS.items():
            if scenario in args:
                args.extend(cut)
        proc = ublox_sim(*args)
        assert proc.returncode == line.exit_code, f"{line.where}:\n{proc.stdout}\n{proc.stderr}"
    homes = sorted(db.parent for db in scratch.glob("*/ublox.db"))
    assert homes, "no documented command made a store"
    for home in homes:
        proc = ublox_sim("verify", "--home", str(home))
        assert proc.returncode == 0, f"{home}:\n{proc.stdout}\n{proc.stderr}"

    help_text = ublox_sim("--help")
    assert help_text.returncode == 0
    for name in cli_main.list_commands(click.Context(cli_main)):
        assert name in help_text.stdout
    version = ublox_sim("--version")
    assert version.returncode == 0
    assert re.search(r"\d+\.\d+\.\d+", version.stdout)
    assert not (tmp_path / "user-home" / ".ublox").exists()
