"""The manifest: ``manifest.json``, the one JSON file that says what a directory holds, with
which configuration, and whether the export has finished."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from advkit._version import __version__
from advkit.io._errors import CorruptDatasetError, DatasetError
from advkit.io._hashing import config_sha256
from advkit.io._shards import SAFETENSORS_DTYPES, atomic_write, shard_name

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INPUT_DTYPES",
    "MANIFEST",
    "config_diff",
    "dtype_named",
    "manifest_skeleton",
    "read_manifest",
    "stored_dtype",
    "write_manifest",
]

FORMAT = "advkit.adversarial-dataset"
FORMAT_VERSION = 1
"""Version of the on-disk format written by this module."""

MANIFEST = "manifest.json"

INPUT_DTYPES = {str(d): d for d in SAFETENSORS_DTYPES if d != torch.uint8}
"""The clean inputs' dtypes an export accepts, by name."""


def dtype_named(name: str) -> torch.dtype:
    """The input dtype recorded in a manifest under ``name``."""
    dtype = INPUT_DTYPES.get(name)
    if dtype is None:
        raise CorruptDatasetError(f"unknown input dtype {name!r} in the manifest.")
    return dtype


def stored_dtype(manifest: Mapping[str, Any]) -> torch.dtype:
    """The clean inputs' dtype recorded in the manifest."""
    return dtype_named(manifest["config"]["dataset"]["dtype"])


def write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(directory / MANIFEST, text.encode())


def manifest_skeleton(
    config: dict[str, Any], fingerprint: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest of an export that has started and not finished."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "config_sha256": fingerprint,
        "versions": {"advkit": __version__, "torch": torch.__version__},
        "complete": False,
        "shards": [],
        **extra,
    }


def read_manifest(
    path: str | os.PathLike[str], *, allow_incomplete: bool = False
) -> dict[str, Any]:
    """Read and validate the manifest of an adversarial dataset directory.

    Args:
        path: the directory `export` wrote.
        allow_incomplete: also return the manifest of an unfinished export
            (``manifest["complete"]`` is then False and ``"shards"`` is empty).

    Returns:
        The manifest as a dict (see the module docstring and the user guide for
        its fields).

    Raises:
        DatasetError: no manifest, or the export has not finished.
        CorruptDatasetError: the manifest is not valid JSON or not a manifest
            of a version this advkit reads.
    """
    directory = Path(path)
    file = directory / MANIFEST
    if not file.is_file():
        raise DatasetError(
            f"{directory} holds no {MANIFEST}: it is not an adversarial dataset written by "
            "advkit.io.export (or the export has not started)."
        )
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptDatasetError(f"{file} is not valid JSON ({err}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptDatasetError(f"{file} is not an advkit adversarial-dataset manifest.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CorruptDatasetError(
            f"{file} has format version {version!r}; this advkit reads version "
            f"{FORMAT_VERSION} and older: upgrade advkit."
        )
    try:
        config = manifest["config"]
        n = int(config["dataset"]["length"])
        shard_size = int(config["shard_size"])
        complete = bool(manifest["complete"])
        shards = manifest["shards"]
        if manifest["config_sha256"] != config_sha256(config):
            raise ValueError("config_sha256 does not match the configuration")
        if config["storage"] not in ("exact", "uint8"):
            raise ValueError(f"unknown storage {config['storage']!r}")
        if config["dataset"]["dtype"] not in INPUT_DTYPES:
            raise ValueError(f"unknown dtype {config['dataset']['dtype']!r}")
        [int(v) for v in config["dataset"]["sample_shape"]]
        if complete:
            expected = [
                (shard_name(s), s * shard_size, min(n, (s + 1) * shard_size))
                for s in range(-(-n // shard_size))
            ]
            got = [(e["file"], int(e["start"]), int(e["stop"])) for e in shards]
            if got != expected or any(
                int(e["count"]) != int(e["stop"]) - int(e["start"]) for e in shards
            ):
                raise ValueError("the shard list does not cover the dataset in order")
            for e in shards:
                if not (isinstance(e["sha256"], str) and len(e["sha256"]) == 64):
                    raise ValueError("a shard has no sha256")
            int(manifest["summary"]["success_count"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptDatasetError(f"{file} is malformed: {err}.") from None
    if not complete and not allow_incomplete:
        raise DatasetError(
            f"the export in {directory} has not finished; run advkit.io.export again with the "
            "same arguments to complete it (it resumes from the shards on disk)."
        )
    return manifest


def config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``"field: old on disk, new requested"`` for every field where two configurations differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} on disk, {new!r} requested"]
    return []
