"""Shard files: safetensors with one advkit metadata entry, written atomically, and the
header checks that refuse a shard of another export, a truncated one or one laid out
otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from advkit.io._errors import CorruptDatasetError, ManifestMismatchError

__all__ = [
    "FIELDS",
    "SAFETENSORS_DTYPES",
    "atomic_write",
    "check_shard_header",
    "read_header",
    "remove_stale_temporaries",
    "safetensors_torch",
    "shard_name",
]

FIELDS = ("x_adv", "index", "label", "target", "success", "distance")
"""The tensors of every shard, in this order."""

SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
}
"""The dtypes a shard's ``x_adv`` may have, by their names in a safetensors header."""

_MAX_HEADER = 100 * 1024 * 1024


def safetensors_torch() -> Any:
    """The ``safetensors.torch`` module; ``ImportError`` naming the extra when it is missing."""
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "advkit.io needs the safetensors package: pip install 'advkit[io]' "
            "(or pip install safetensors)."
        ) from None
    return st


def shard_name(s: int) -> str:
    """The file name of shard ``s``."""
    return f"shard-{s:05d}.safetensors"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are flushed and
    fsynced, and the file is renamed over ``path`` (atomic on POSIX and
    Windows); the directory is then fsynced so that the rename survives a crash.
    """
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def remove_stale_temporaries(directory: Path, manifest_name: str) -> None:
    """Delete the temporary files a killed run left behind."""
    stale = [
        *directory.glob(".shard-*.safetensors.*.tmp"),
        *directory.glob(f".{manifest_name}.*.tmp"),
    ]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensor table and advkit metadata of a shard file, validated against its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > min(size - 8, _MAX_HEADER):
                raise ValueError("header length larger than the file")
            header = json.loads(f.read(n))
        meta = json.loads(header.pop("__metadata__")["advkit"])
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes on disk, the header describes {8 + n + end}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as err:
        raise CorruptDatasetError(
            f"shard file {path} is unreadable or truncated ({err}); delete it and run "
            "advkit.io.export again with the same arguments to recompute it."
        ) from None
    if not isinstance(meta, dict):
        raise CorruptDatasetError(f"shard file {path} has malformed advkit metadata.")
    return header, meta


def check_shard_header(
    path: Path,
    s: int,
    start: int,
    stop: int,
    fingerprint: str,
    x_dtype: str,
    sample_shape: Sequence[int],
) -> None:
    """Refuse a shard written by another configuration or not holding samples
    ``[start, stop)`` in the layout of this export."""
    header, meta = read_header(path)
    if meta.get("config_sha256") != fingerprint:
        raise ManifestMismatchError(
            f"shard file {path} was written by an export with a different configuration; "
            "export into another directory, or delete this one to start over."
        )
    count = stop - start
    ok = (meta.get("shard"), meta.get("start"), meta.get("stop")) == (s, start, stop)
    expect = {
        "x_adv": (x_dtype, [count, *sample_shape]),
        "index": ("I64", [count]),
        "label": ("I64", [count]),
        "target": ("I64", [count]),
        "success": ("BOOL", [count]),
    }
    for name, (dt, shp) in expect.items():
        entry = header.get(name)
        ok = (
            ok and isinstance(entry, dict) and (entry.get("dtype"), entry.get("shape")) == (dt, shp)
        )
    dist = header.get("distance")
    ok = ok and isinstance(dist, dict) and dist.get("shape") == [count]
    if not ok:
        raise CorruptDatasetError(
            f"shard file {path} does not hold samples [{start}, {stop}) in the expected layout; "
            "delete it and run advkit.io.export again with the same arguments to recompute it."
        )
