"""The export format: a store as one JSON document, and back.

    {"format": "ublox-export", "version": 2, "schema_version": N, "digest": "sha256:…",
     "players": [...], "ptos": [{..., "cdt": {name: array}}], "pts_tokens": [...],
     "transactions": [...], "play_sessions": [...], "run": {...}}

Records are the seed's dicts (money in major units); arrays are byte-shuffled,
deflated and base64-encoded; the digest covers the content, so an import can tell
an edited file from the one that was written. ``run`` is the scenario run recorded in
the store: a run still going carries its whole record (``started_at`` and the runner's
``state`` too), so an imported copy can be resumed (``run --resume``); a finished run's
keeps the shape exports had before (name, seed, scenario, tick, total_ticks, finished:
there is nothing left to resume, and exports of a seed stay byte-identical). Pure
functions but ``export_store``: writing the file is the stores'.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..core.errors import InvalidInput
from ..core.ids import check_file_name
from ..core.records import PTO, RECORD_TYPES, Record, from_seed, to_seed
from .backend import RunRecord
from .sqlite.schema import FIRST_RELEASE_SCHEMA_VERSION, SCHEMA_VERSION

EXPORT_FORMAT = "ublox-export"
# 2: a content digest, arrays byte-shuffled and deflated, one record per line.
EXPORT_VERSION = 2
EXPORT_VERSIONS = (1, 2)
# What the last release before digests (0.1.0) wrote: export version 1 of a schema-2 store.
PRE_DIGEST_EXPORT_VERSION = 1
PRE_DIGEST_SCHEMA_VERSION = FIRST_RELEASE_SCHEMA_VERSION

Arrays = Mapping[str, NDArray[np.generic]]


# -- writing ----------------------------------------------------------------------------


def export_document(
    records: Mapping[str, Sequence[Record]],
    worlds: Mapping[str, dict[str, Any]],
    run: dict[str, Any] | None,
) -> dict[str, Any]:
    """The export of a store's content, sealed with its digest.

    ``records``: every record, by table; ``worlds``: each world's arrays as
    ``encode_arrays`` gives them, by world id; ``run``: the recorded run, if any."""
    data: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "schema_version": SCHEMA_VERSION,
    }
    for cls in RECORD_TYPES:
        data[cls.TABLE] = [to_seed(r) for r in records.get(cls.TABLE, ())]
    for pto in data["ptos"]:
        if pto["world_cdt_id"]:
            pto["cdt"] = worlds[pto["world_cdt_id"]]
    if run is not None:
        data["run"] = run
    # Recorded in every export, the file's and the HTTP API's: import checks it.
    data["digest"] = export_digest(data)
    return data


async def export_store(
    load_all: Callable[[type[Record]], Awaitable[Sequence[Any]]],
    load_world: Callable[[str], Awaitable[Arrays]],
    run: RunRecord | None,
) -> dict[str, Any]:
    """The export of a store read through ``load_all`` (a record type's rows) and
    ``load_world`` (a world's arrays), its recorded ``run`` with it (both backends)."""
    records: dict[str, Sequence[Record]] = {}
    for cls in RECORD_TYPES:
        records[cls.TABLE] = await load_all(cls)
    worlds: dict[str, dict[str, Any]] = {}
    for pto in records[PTO.TABLE]:
        assert isinstance(pto, PTO)
        if pto.world_cdt_id and pto.world_cdt_id not in worlds:
            worlds[pto.world_cdt_id] = encode_arrays(await load_world(pto.world_cdt_id))
    return export_document(records, worlds, run_document(run))


def run_document(run: RunRecord | None) -> dict[str, Any] | None:
    """The recorded run as an export holds it (see the module docstring)."""
    if run is None:
        return None
    document: dict[str, Any] = {
        "name": run.name,
        "seed": run.seed,
        "scenario": json.loads(run.scenario),
        "tick": run.tick,
        "total_ticks": run.total_ticks,
        "finished": run.finished,
    }
    if not run.finished:  # what resuming it needs
        document["started_at"] = run.started_at
        document["state"] = json.loads(run.state)
    return document


def export_text(data: Mapping[str, Any]) -> str:
    """The export as JSON text: one key per line, and one record per line.

    A record per line keeps it readable (and ``grep``-able, and diffable) at about
    30% less than an indented tree."""
    lines = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list) and value:
            items = ",\n".join("  " + _compact(item) for item in value)
            lines.append(f"{json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {_compact(value)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def export_digest(data: Mapping[str, Any]) -> str:
    """sha256 over an export's content (everything but the digest), independent of layout."""
    content = {k: v for k, v in data.items() if k != "digest"}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- reading ----------------------------------------------------------------------------


def check_export_digest(data: object, where: str, *, force: bool) -> list[str]:
    """Refuse an export edited since it was written (unless ``force``); return warnings."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"{where} is not a ublox export (missing format: {EXPORT_FORMAT})")
    recorded = data.get("digest")
    if recorded is None and _export_predates_digests(data):
        return [
            f"export {where} records no content digest: it was written before digests "
            f"were recorded (export version {data.get('version')}), so it could not be "
            "checked for edits since"
        ]
    if recorded is None:
        # Every export of a format that records a digest has one: deleting it is an
        # edit, not an old file (else deleting it would be how to slip an edit past).
        message = (
            f"export {where} (export version {data.get('version')!r}) has lost the content "
            "digest that every export of its format records (edited by hand?)"
        )
    elif recorded == export_digest(data):
        return []
    else:
        message = (
            f"export {where} differs from the content digest recorded in it when it was "
            "written (edited by hand?)"
        )
    if not force:
        raise InvalidInput(
            f"{message}; if the edit was intended, import it with force=True "
            f"(`ublox-sim import {where} --force`)"
        )
    return [f"{message}; imported anyway (force)"]


def _export_predates_digests(data: Mapping[str, Any]) -> bool:
    """True only for an export whose format says it was written before digests existed:
    version 1, of a schema no newer than 0.1.0's, with none of version 2's encoded arrays
    (a file relabelled "version": 1 to shed its digest is not one)."""
    if data.get("version") != PRE_DIGEST_EXPORT_VERSION:
        return False
    schema = data.get("schema_version")
    if not isinstance(schema, int) or schema > PRE_DIGEST_SCHEMA_VERSION:
        return False
    ptos = data.get("ptos")
    for pto in ptos if isinstance(ptos, list) else []:
        cdt = pto.get("cdt") if isinstance(pto, dict) else None
        for spec in cdt.values() if isinstance(cdt, dict) else []:
            if isinstance(spec, dict) and "encoding" in spec:
                return False
    return True


def parse_export(
    data: object, where: str
) -> tuple[dict[str, list[Record]], dict[str, dict[str, NDArray[np.generic]]]]:
    """Validate an export's shape and turn it into records and world arrays."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InvalidInput(f"{where} is not a ublox export (missing format: {EXPORT_FORMAT})")
    if data.get("version") not in EXPORT_VERSIONS:
        raise InvalidInput(f"{where}: export version {data.get('version')!r} is not supported")
    records: dict[str, list[Record]] = {}
    worlds: dict[str, dict[str, NDArray[np.generic]]] = {}
    for cls in RECORD_TYPES:
        items = data.get(cls.TABLE, [])
        if not isinstance(items, list):
            raise InvalidInput(f"{where}: {cls.TABLE} must be a list")
        parsed: list[Record] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                raise InvalidInput(f"{where}: {cls.TABLE}[{index}] must be an object")
            item = dict(item)
            cdt = item.pop("cdt", None)
            try:
                record: Record = from_seed(cls, item)  # type: ignore[type-var]
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {cls.TABLE}[{index}]: {exc}") from exc
            if isinstance(record, PTO) and cdt is not None:
                if not record.world_cdt_id or not isinstance(cdt, dict):
                    raise InvalidInput(f"{where}: ptos[{index}].cdt without a world_cdt_id")
                check_file_name(record.world_cdt_id, "world_cdt_id")
                worlds[record.world_cdt_id] = {
                    name: decode_array(spec, f"{where}: ptos[{index}].cdt.{name}")
                    for name, spec in cdt.items()
                }
            parsed.append(record)
        records[cls.TABLE] = parsed
    return records, worlds


def parse_run(data: Mapping[str, Any], where: str) -> RunRecord | None:
    """The run record an export carries whole (a run still going), else None: no run, a
    finished one, or an export written before runs were carried whole (imported without
    its run, as they always were: there is nothing to resume)."""
    run = data.get("run")
    if run is None:
        return None
    if not isinstance(run, dict):
        raise InvalidInput(f"{where}: run must be an object")
    if "state" not in run and "started_at" not in run:
        return None
    kinds: dict[str, type | tuple[type, ...]] = {
        "name": str,
        "seed": int,
        "scenario": dict,
        "started_at": str,
        "tick": int,
        "total_ticks": int,
        "state": dict,
        "finished": bool,
    }
    for name, kind in kinds.items():
        value = run.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidInput(f"{where}: run.{name} is missing or not a {_kind_name(kind)}")
    if not 0 <= run["tick"] <= run["total_ticks"]:
        raise InvalidInput(f"{where}: run.tick {run['tick']} is not in 0..run.total_ticks")
    return RunRecord(
        name=run["name"],
        seed=run["seed"],
        # As the runner records them (``resolved_scenario``, ``state_json``): sorted keys.
        scenario=json.dumps(run["scenario"], sort_keys=True),
        started_at=run["started_at"],
        tick=run["tick"],
        total_ticks=run["total_ticks"],
        state=json.dumps(run["state"], sort_keys=True),
        finished=run["finished"],
    )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return {str: "string", int: "integer", dict: "object", bool: "boolean"}[kind]  # type: ignore[index]


# -- arrays -----------------------------------------------------------------------------


ARRAY_ENCODING = "shuffle+zlib+base64"


def encode_arrays(arrays: Arrays) -> dict[str, dict[str, Any]]:
    """A world's arrays as the export holds them, by name in sorted order."""
    return {name: encode_array(a) for name, a in sorted(arrays.items())}


def shuffle_bytes(array: NDArray[np.generic]) -> bytes:
    """The array's bytes as byte planes: byte 0 of every item, then byte 1, ..."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.uint8).reshape(flat.size, flat.dtype.itemsize).T.tobytes()


def unshuffle_bytes(raw: bytes, dtype: np.dtype[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """The inverse of ``shuffle_bytes``: a fresh, writable array."""
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def encode_array(array: NDArray[np.generic]) -> dict[str, Any]:
    """An array as JSON: its bytes byte-shuffled, deflated and base64-encoded.

    Byte-shuffling (all first bytes, then all second bytes, ...) puts the float64
    exponents side by side, where deflate finds them alike; the mantissas stay as
    they are. Lossless: decoding gives the same bytes."""
    return {
        "dtype": array.dtype.str,
        # (not np.ascontiguousarray(array).shape: that makes a 0-d array 1-d)
        "shape": list(array.shape),
        "encoding": ARRAY_ENCODING,
        "data": base64.b64encode(zlib.compress(shuffle_bytes(array), 9)).decode("ascii"),
    }


def decode_array(data: Mapping[str, Any], where: str) -> NDArray[np.generic]:
    """The inverse of ``encode_array``; also reads release 0.1.0's plain base64."""
    try:
        dtype = np.dtype(str(data["dtype"]))
        if dtype.hasobject:
            raise ValueError("object arrays are not allowed")
        shape = tuple(int(n) for n in data["shape"])
        if any(n < 0 for n in shape):
            raise ValueError(f"negative dimension in {shape}")
        raw = base64.b64decode(str(data["data"]), validate=True)
        encoding = data.get("encoding")
        size = math.prod(shape) * dtype.itemsize
        if encoding == ARRAY_ENCODING:
            inflater = zlib.decompressobj()
            # Never inflate more than the shape says: a doctored size is not a memory bomb.
            raw = inflater.decompress(raw, size + 1)
            if len(raw) != size or not inflater.eof or inflater.unused_data:
                raise ValueError(f"the data does not hold {shape} × {dtype.str}")
            return unshuffle_bytes(raw, dtype, shape)
        if encoding is not None:
            raise ValueError(f"unknown encoding {encoding!r}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError, zlib.error) as exc:
        raise InvalidInput(f"{where}: bad array: {exc}") from exc


__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "check_export_digest",
    "decode_array",
    "encode_array",
    "encode_arrays",
    "export_digest",
    "export_document",
    "export_store",
    "export_text",
    "parse_export",
    "parse_run",
    "run_document",
]
