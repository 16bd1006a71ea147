"""Read an offline W&B run back from its ``run-<id>.wandb`` file, for tests (no server, no network).

The file is W&B's record log: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of records in
LevelDB's log layout (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last), each record
a ``wandb_internal_pb2.Record``. wandb >= 0.20 dropped its Python reader; this one is only for tests.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            yield b"".join([*parts, chunk])


@dataclass
class OfflineRun:
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    artifacts: list[dict] = field(default_factory=list)  # name, type, references


def _value(v):
    return v.get("value", v) if isinstance(v, dict) else v  # config values arrive as {"value": ...}


def _items(items) -> dict:
    out = {}
    for item in items:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(run_folder: Path) -> OfflineRun:
    """The run, config, summary, history keys and logged artifacts of one ``offline-run-*`` folder."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = Path(run_folder).glob("run-*.wandb")
    run = OfflineRun()
    for payload in _payloads(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config |= {k: _value(v) for k, v in _items(r.config.update).items()}
        elif kind == "config":
            run.config |= {k: _value(v) for k, v in _items(record.config.update).items()}
        elif kind == "summary":
            run.summary |= _items(record.summary.update)
        elif kind == "history":
            run.history_keys |= set(_items(record.history.item))
        elif kind == "artifact":
            a = record.artifact
            refs = [c.ref for c in a.manifest.contents]
            run.artifacts.append({"name": a.name, "type": a.type, "references": refs})
    return run
