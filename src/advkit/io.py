"""Adversarial datasets on disk: attack a whole dataset, save the result, load it back.

`export` attacks every sample of a map-style dataset and writes the
adversarial examples as [safetensors](https://github.com/huggingface/safetensors)
shards plus a JSON manifest; `AdversarialDataset` reads them back as a
``torch.utils.data.Dataset`` and `load` as whole tensors. Nothing is ever
unpickled: shards are safetensors files and the manifest is JSON.

A directory written by `export` holds:

```text
manifest.json             format version, configuration, one entry per shard
shard-00000.safetensors   samples [0, shard_size)
shard-00001.safetensors   samples [shard_size, 2 * shard_size)
...
```

Shard ``s`` always holds the dataset indices ``[s * shard_size, (s + 1) * shard_size)``
(the last one fewer), whatever the batch size or the number of processes, and
holds the tensors ``x_adv`` (the stored examples), ``index`` (their indices in
the clean dataset), ``label`` (true labels), ``target`` (target classes, ``-1``
for an untargeted attack), ``success`` and ``distance`` (of what is stored).

Every random draw of sample ``i`` depends only on ``(seed, i)`` (the attack is
called with ``sample_ids=``, see `advkit.functional.KeyedGenerator`), each
shard is written atomically, and a run killed at any point resumes from the
shards already on disk: the result is the same as an uninterrupted run's.
Under ``torchrun`` every rank attacks its own shards.

This module needs the ``safetensors`` package (``pip install "advkit[io]"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import secrets
import struct
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler
from torch.utils.data.dataloader import default_collate

from advkit import distributed
from advkit._version import __version__
from advkit.attacks.base import Attack, TargetSpec
from advkit.checks import AdvkitError, ConfigError, check_eps, check_positive_int
from advkit.models import Classifier, model_guard, wrap
from advkit.norms import L1, L2, Linf, Norm

__all__ = [
    "FORMAT_VERSION",
    "AdversarialDataset",
    "CorruptDatasetError",
    "DatasetError",
    "ExportReport",
    "ManifestMismatchError",
    "Storage",
    "export",
    "load",
    "read_manifest",
]

FORMAT = "advkit.adversarial-dataset"
FORMAT_VERSION = 1
"""Version of the on-disk format written by this module."""

MANIFEST = "manifest.json"
LEVELS = 256
"""Number of grey levels of the ``uint8`` storage mode."""

Storage = Literal["exact", "uint8"]
"""``"exact"``: the examples in the inputs' dtype, bit for bit; ``"uint8"``: one
byte per coordinate, re-projected into the ball and the box (see `export`)."""

_FIELDS = ("x_adv", "index", "label", "target", "success", "distance")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.safetensors$")
_HASH_CHUNK = 1 << 24
_MAX_HEADER = 100 * 1024 * 1024


class DatasetError(AdvkitError, ValueError):
    """An adversarial dataset on disk cannot be used (base class; also: an unfinished export)."""


class CorruptDatasetError(DatasetError):
    """A manifest or shard is unreadable, truncated or fails its checksum."""


class ManifestMismatchError(DatasetError):
    """The directory holds an export made with a different configuration."""


# --------------------------------------------------------------------------- helpers


def _safetensors_torch() -> Any:
    try:
        import safetensors.torch as st
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "advkit.io needs the safetensors package: pip install 'advkit[io]' "
            "(or pip install safetensors)."
        ) from None
    return st


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}.safetensors"


def _tensor_buffer(t: Tensor) -> Any:
    """The raw bytes of ``t`` (any dtype, bfloat16 included) as a numpy uint8 array."""
    flat = t.detach().contiguous().cpu().reshape(-1)
    return flat.view(torch.uint8).numpy()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _payload_sha256(tensors: Mapping[str, Tensor]) -> str:
    """A checksum of the tensors' names, dtypes, shapes and contents (not of the file)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_tensor_buffer(t))
    return h.hexdigest()


def _fingerprint(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


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


def _atomic_write(path: Path, data: bytes) -> None:
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


def _remove_stale_temporaries(directory: Path) -> None:
    stale = [*directory.glob(".shard-*.safetensors.*.tmp"), *directory.glob(f".{MANIFEST}.*.tmp")]
    for p in stale:
        with contextlib.suppress(OSError):
            p.unlink()


def _jsonable(value: Any) -> Any:
    """A JSON-safe, deterministic rendering of a setting (floats kept exact via repr)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Tensor):
        return {"tensor_sha256": _payload_sha256({"t": value}), "shape": list(value.shape)}
    return _describe_callable(value)


def _describe_callable(obj: Any) -> str:
    """A name for a function or object that is the same in every process (no addresses)."""
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type)):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    cls = type(obj)
    text = repr(obj)
    own_repr = any("__repr__" in vars(k) for k in cls.__mro__[:-1])
    if own_repr and " at 0x" not in text:
        return f"{cls.__module__}.{text}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _model_sha256(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(_tensor_buffer(t))
    return h.hexdigest()


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _stat(t: Tensor | None) -> list[float] | None:
    return None if t is None else [float(v) for v in t.reshape(-1).tolist()]


# --------------------------------------------------------------------------- uint8 storage


def _levels(bounds: tuple[float, float], dtype: torch.dtype) -> Tensor:
    """The 256 grey levels ``low + k (high - low) / 255`` in ``dtype``, on the CPU.

    Computed once in float64 and rounded to ``dtype``; a level that rounding
    pushed outside the box is moved to the next representable value inside,
    so every level lies in ``[low, high]`` exactly. Export and loading both
    decode through this table, so a stored code means the same value everywhere.
    """
    lo, hi = bounds
    k = torch.arange(LEVELS, dtype=torch.float64)
    exact = lo + k * ((hi - lo) / (LEVELS - 1))
    exact[-1] = hi
    lv = exact.to(dtype)
    up = torch.full_like(lv, math.inf)
    down = torch.full_like(lv, -math.inf)
    lv = torch.where(lv.double() < lo, torch.nextafter(lv, up), lv)
    lv = torch.where(lv.double() > hi, torch.nextafter(lv, down), lv)
    return lv


def _nearest_code(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    q = torch.round((x.double() - lo) * ((LEVELS - 1) / (hi - lo)))
    return q.clamp_(0, LEVELS - 1).to(torch.int64)


def _floor_code(x: Tensor, bounds: tuple[float, float]) -> Tensor:
    lo, hi = bounds
    q = torch.floor((x.double() - lo) * ((LEVELS - 1) / (hi - lo)))
    return q.clamp_(0, LEVELS - 2).to(torch.int64)


def _quantize(
    x_adv: Tensor,
    x0: Tensor,
    norm: Norm,
    eps: float | None,
    bounds: tuple[float, float],
    levels: Tensor,
) -> Tensor:
    """Codes (int64 in ``[0, 255]``) of ``x_adv`` on the grid of ``levels``, kept in the ball.

    Every coordinate is first rounded to its nearest level. Then, if ``eps`` is
    given, samples whose rounded perturbation left the ball are fixed:

    * Linf: each coordinate that left ``[x0 - eps, x0 + eps]`` moves one level
      back toward the clean value: the nearest level inside the interval
      (rounding moved it by less than one level).
    * L2 / L1: coordinates are switched, largest reduction of
      ``|v_i - x0_i|^p`` first, from the level nearest to ``x_adv`` to the
      other level next to ``x_adv``, the one on the clean value's side (still
      within one level of ``x_adv``), until the norm fits. If that is not
      enough (the clean input is off the grid, or ``x_adv`` itself exceeded
      eps by a rounding error), further rounds move coordinates one more level
      toward the level nearest to the clean value, again the fewest first.
      The last possible state is that nearest level on every coordinate, the
      grid point closest to ``x0`` in any Lp norm.

    Feasibility is checked with the library's own measure
    (`advkit.norms`), compared with ``eps`` in float64.

    Raises:
        ConfigError: no grid point lies in the ball for some sample (the clean
            input is off the grid and ``eps`` is smaller than its own rounding
            error); store with ``storage="exact"`` instead.
    """
    levels = levels.to(device=x_adv.device)
    q = _nearest_code(x_adv, bounds)
    if eps is None:
        return q
    if isinstance(norm, Linf):
        for _ in range(3):
            d = (levels[q] - x0).double()
            q = torch.where(d > eps, q - 1, torch.where(d < -eps, q + 1, q)).clamp_(0, LEVELS - 1)
    elif isinstance(norm, (L2, L1)):
        p = 2.0 if isinstance(norm, L2) else 1.0
        if bool((norm.measure(levels[q] - x0).double() > eps).any()):
            c = _nearest_code(x0, bounds)
            floor = norm.measure(levels[c] - x0).double()  # the closest grid point's distance
            if bool((floor > eps).any()):
                _raise_no_grid_point(int((floor > eps).sum()), norm, eps)
            # first the other level next to x_adv, on the clean value's side ...
            low = _floor_code(x_adv, bounds)
            alt = torch.where(x0 < x_adv, low, torch.where(x0 > x_adv, low + 1, q))
            for _ in range(LEVELS):
                closer = (levels[alt] - x0).abs() < (levels[q] - x0).abs()
                q = _greedy_switch(q, torch.where(closer, alt, q), x0, eps, p, norm, levels)
                if not bool((norm.measure(levels[q] - x0).double() > eps).any()):
                    break
                # ... then whole levels further toward it, where the float excess needs it
                alt = torch.where(c < q, q - 1, torch.where(c > q, q + 1, q))
    else:
        raise ConfigError(
            f"storage='uint8' supports the linf, l2 and l1 threat models, not {norm!r}; "
            "use storage='exact'."
        )
    bad = norm.measure(levels[q] - x0).double() > eps
    if bool(bad.any()):
        _raise_no_grid_point(int(bad.sum()), norm, eps)
    return q


def _raise_no_grid_point(count: int, norm: Norm, eps: float) -> NoReturn:
    raise ConfigError(
        f"storage='uint8' cannot store {count} sample(s) of this batch inside the "
        f"{norm.name} ball of radius {eps:g}: no point of the 256-level grid of the box lies "
        "that close to their clean inputs (the clean inputs are not on the grid and eps is "
        "smaller than their own rounding error). Use storage='exact', a larger eps, or "
        "clean inputs quantized to the grid."
    )


def _greedy_switch(
    cur: Tensor,
    alt: Tensor,
    x0: Tensor,
    eps: float,
    p: float,
    norm: Norm,
    levels: Tensor,
) -> Tensor:
    """Per sample, replace ``cur`` by ``alt`` on the fewest coordinates that bring the norm <= eps.

    ``alt`` must be no farther from ``x0`` than ``cur`` on every coordinate.
    Coordinates are taken in decreasing order of the reduction of
    ``|v_i - x0_i|^p`` they bring; the count is estimated in float64 and then
    raised until the library's measure agrees (or every coordinate is switched).
    """
    shape = cur.shape
    a = (levels[cur] - x0).double().abs().pow(p).flatten(1)
    b = (levels[alt] - x0).double().abs().pow(p).flatten(1)
    gain = (a - b).clamp_(min=0)
    order = gain.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    excess = a.sum(dim=1) - eps**p
    cum = gain.gather(1, order).cumsum(dim=1)
    count = (cum < excess.unsqueeze(1)).sum(dim=1) + 1
    count = torch.where(excess > 0, count, torch.zeros_like(count)).clamp_(max=order.shape[1])
    full = order.shape[1]
    cur_f, alt_f = cur.flatten(1), alt.flatten(1)
    for attempt in range(66):
        q = torch.where(rank < count.unsqueeze(1), alt_f, cur_f).reshape(shape)
        bad = (norm.measure(levels[q] - x0).double() > eps) & (count < full)
        if not bool(bad.any()):
            return q
        # float64 and the measure's precision disagree by a few coordinates at most
        step = 1 if attempt < 64 else full
        count = torch.where(bad, (count + step).clamp_(max=full), count)
    return torch.where(rank < count.unsqueeze(1), alt_f, cur_f).reshape(shape)


# --------------------------------------------------------------------------- shard files


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
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


def _check_shard_header(
    path: Path,
    s: int,
    start: int,
    stop: int,
    fingerprint: str,
    x_dtype: str,
    sample_shape: Sequence[int],
) -> None:
    header, meta = _read_header(path)
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


_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.uint8: "U8",
}
_INPUT_DTYPES = {str(d): d for d in _ST_DTYPES if d != torch.uint8}


def _dtype_named(name: str) -> torch.dtype:
    dtype = _INPUT_DTYPES.get(name)
    if dtype is None:
        raise CorruptDatasetError(f"unknown input dtype {name!r} in the manifest.")
    return dtype


# --------------------------------------------------------------------------- manifest


def _write_manifest(directory: Path, manifest: Mapping[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n"
    _atomic_write(directory / MANIFEST, text.encode())


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
        if manifest["config_sha256"] != _fingerprint(config):
            raise ValueError("config_sha256 does not match the configuration")
        if config["storage"] not in ("exact", "uint8"):
            raise ValueError(f"unknown storage {config['storage']!r}")
        if config["dataset"]["dtype"] not in _INPUT_DTYPES:
            raise ValueError(f"unknown dtype {config['dataset']['dtype']!r}")
        [int(v) for v in config["dataset"]["sample_shape"]]
        if complete:
            expected = [
                (_shard_name(s), s * shard_size, min(n, (s + 1) * shard_size))
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


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _config_diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {old!r} on disk, {new!r} requested"]
    return []


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportReport:
    """What `export` did.

    Attributes:
        path: the dataset directory.
        num_samples: samples in the dataset (all shards, all ranks).
        num_shards: shard files in the dataset.
        shards_written: shards this process attacked and wrote during this call.
        shards_reused: shards found complete on disk when the call started
            (a resumed or repeated export).
        success_count: samples whose stored example is adversarial (whole dataset).
    """

    path: Path
    num_samples: int
    num_shards: int
    shards_written: int
    shards_reused: int
    success_count: int

    @property
    def success_rate(self) -> float:
        """Fraction of the dataset whose stored example is adversarial."""
        return self.success_count / max(self.num_samples, 1)


def _resolve_dataset(
    dataset: Any, batch_size: int | None, num_workers: int | None
) -> tuple[Any, Callable[[list[Any]], Any], int, int]:
    if isinstance(dataset, DataLoader):
        loader = dataset
        if isinstance(loader.dataset, IterableDataset) or not isinstance(
            loader.sampler, SequentialSampler
        ):
            raise ConfigError(
                "export needs a DataLoader that visits the dataset in order (a shuffling or "
                "custom sampler would change which samples each shard holds): build it with "
                "shuffle=False, or pass the map-style dataset itself (loader.dataset)."
            )
        return (
            loader.dataset,
            loader.collate_fn,
            (loader.batch_size or 128) if batch_size is None else batch_size,
            loader.num_workers if num_workers is None else num_workers,
        )
    if isinstance(dataset, IterableDataset) or not (
        hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")
    ):
        raise ConfigError(
            f"export needs a map-style dataset (with __len__ and __getitem__ returning "
            f"(input, label, ...)), got {type(dataset).__name__}; an iterable dataset has no "
            "stable sample indices to resume from."
        )
    return dataset, default_collate, 128 if batch_size is None else batch_size, num_workers or 0


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, (list, tuple)) or len(batch) < 2:
        raise ConfigError(
            "dataset items must be (input, label, ...) tuples; wrap the dataset so that "
            f"__getitem__ returns them (got a batch of type {type(batch).__name__})."
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise ConfigError(
            "dataset items must be (input tensor, integer label, ...); got "
            f"({type(x).__name__}, {type(y).__name__}) after collation."
        )
    return x, y


def _targets_entry(targets: TargetSpec, n: int) -> Any:
    if targets is None:
        return None
    if isinstance(targets, Tensor):
        if targets.shape != (n,) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ConfigError(
                f"a tensor of targets for export must hold one integer class per dataset "
                f"sample, shape ({n},), got {targets.dtype} of shape {tuple(targets.shape)}."
            )
        return {"tensor_sha256": _payload_sha256({"t": targets.to(torch.int64)})}
    if not callable(targets):
        raise ConfigError(
            "targets must be None, a tensor of classes (one per dataset sample) or a target "
            f"map such as advkit.targets.shift(1), got {type(targets).__name__}."
        )
    return {"map": _describe_callable(targets)}


def _build_config(
    *,
    attack: Attack,
    model: Classifier,
    eps: float | None,
    targets: TargetSpec,
    seed: int,
    storage: str,
    shard_size: int,
    n: int,
    probe: tuple[Tensor, Tensor],
) -> dict[str, Any]:
    x0, y0 = probe
    h = hashlib.sha256()
    h.update(_tensor_buffer(x0))
    h.update(_tensor_buffer(y0.to(torch.int64)))
    effective = attack.eps if eps is None else eps
    return {
        "attack": {
            "class": f"{type(attack).__module__}.{type(attack).__qualname__}",
            "repr": repr(attack),
            "settings": _jsonable(attack._settings()),
            "norm": repr(attack.norm),
            "objective": _describe_callable(attack.objective),
        },
        "call": {
            "eps": _jsonable(eps),
            "effective_eps": _jsonable(effective),
            "targets": _targets_entry(targets, n),
            "seed": seed,
        },
        "model": {
            "bounds": list(model.bounds),
            "mean": _stat(model.mean),
            "std": _stat(model.std),
            "parameters_sha256": _model_sha256(model),
        },
        "dataset": {
            "length": n,
            "dtype": str(x0.dtype),
            "sample_shape": list(x0.shape),
            "first_sample_sha256": h.hexdigest(),
        },
        "storage": storage,
        "shard_size": shard_size,
    }


def _scan_shards(
    directory: Path, num_shards: int, n: int, shard_size: int, config: Mapping[str, Any], fp: str
) -> list[bool]:
    ds = config["dataset"]
    stored = torch.uint8 if config["storage"] == "uint8" else _dtype_named(ds["dtype"])
    done = []
    for s in range(num_shards):
        file = directory / _shard_name(s)
        if file.exists():
            start, stop = s * shard_size, min(n, (s + 1) * shard_size)
            _check_shard_header(file, s, start, stop, fp, _ST_DTYPES[stored], ds["sample_shape"])
        done.append(file.exists())
    return done


def _finalize(
    directory: Path, config: dict[str, Any], fp: str, n: int, shard_size: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Verify every shard and write the complete manifest (rank 0 only)."""
    st = _safetensors_torch()
    entries = []
    success = 0
    for s in range(-(-n // shard_size)):
        file = directory / _shard_name(s)
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        if not file.exists():
            raise CorruptDatasetError(
                f"shard file {file} is missing after every rank finished; run advkit.io.export "
                "again with the same arguments to recompute it."
            )
        _, meta = _read_header(file)
        data = file.read_bytes()
        tensors = st.load(data)
        if _payload_sha256(tensors) != meta.get("payload_sha256"):
            raise CorruptDatasetError(
                f"shard file {file} does not match the checksum written with it; delete it and "
                "run advkit.io.export again with the same arguments to recompute it."
            )
        success += int(tensors["success"].sum())
        entries.append(
            {
                "file": file.name,
                "start": start,
                "stop": stop,
                "count": stop - start,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
            }
        )
    manifest = _manifest_skeleton(config, fp, extra)
    manifest["complete"] = True
    manifest["shards"] = entries
    manifest["summary"] = {"num_samples": n, "success_count": success}
    _write_manifest(directory, manifest)
    return manifest


def _manifest_skeleton(config: dict[str, Any], fp: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config,
        "config_sha256": fp,
        "versions": {"advkit": __version__, "torch": torch.__version__},
        "complete": False,
        "shards": [],
        **extra,
    }


def export(
    model: nn.Module,
    dataset: Dataset[Any] | DataLoader[Any],
    attack: Attack,
    path: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    shard_size: int = 1024,
    eps: float | None = None,
    targets: TargetSpec = None,
    seed: int = 0,
    storage: Storage = "exact",
    num_workers: int | None = None,
    progress: bool = False,
) -> ExportReport:
    r"""Attack every sample of ``dataset`` and save the adversarial examples under ``path``.

    The dataset is cut into fixed shards of ``shard_size`` consecutive indices;
    each shard is attacked in batches of ``batch_size`` (the last batch of a
    shard may be smaller) and written atomically to ``shard-SSSSS.safetensors``.
    Sample ``i`` is attacked with ``generator=torch.Generator(device).manual_seed(seed)``
    and ``sample_ids`` holding ``i``, so its random start (and random target)
    depends only on ``(seed, i)``: the stored dataset does not depend on the
    number of processes or on where a killed run resumed (batched kernels may
    round differently for another ``batch_size``, so keep it to reproduce a
    run bit for bit). The model runs on the device of its parameters: move it
    there first.

    **Resuming.** Run the same call again after a crash, a SIGKILL or a
    pre-emption: shards already on disk are kept (each was renamed into place
    only once complete), the others are attacked, and the result equals an
    uninterrupted run's sample for sample. A directory written with another
    configuration (attack settings, eps, targets, seed, model weights or
    bounds, dataset length, dtype or first sample, storage, shard size) is
    refused, never mixed. A finished export is returned at once.

    **Storage.** ``"exact"`` keeps ``x_adv`` bit for bit in the inputs' dtype,
    with the attack's own ``success`` and ``distance``. ``"uint8"`` stores one
    of the 256 levels ``low + k (high - low) / 255`` of the model's box per
    coordinate and guarantees, for each stored example ``v`` with clean input
    ``x0``, that ``low <= v <= high`` and ``norm.measure(v - x0) <= eps`` (the
    library's measure, compared with eps in float64), as long as some grid
    point lies in the ball: always when ``x0`` is on the grid (e.g. 8-bit
    images scaled by 1/255) and, for Linf, whenever eps is at least half a
    level. Rounding is fixed up where it left the ball (see the user guide);
    ``success`` and ``distance`` are then re-computed on ``v`` with the model.

    **Distributed.** Under ``torchrun`` (an initialized process group) rank
    ``r`` of ``w`` attacks the ``r``-th, ``(r + w)``-th, ... of the shards
    still missing, without padding; rank 0 checks every shard and writes the
    manifest once all ranks are done. The directory must be shared by all
    ranks (one machine, or a shared file system).

    Args:
        model: the classifier, an `advkit.Classifier` (bounds, mean, std) or
            any ``nn.Module`` (wrapped with ``bounds=(0, 1)``).
        dataset: a map-style dataset whose items are ``(input, label, ...)``
            (inputs in the model's box, pixel space), or a non-shuffling
            ``DataLoader`` over one (its collate function is used, and its
            ``batch_size`` and ``num_workers`` unless given here).
        attack: any advkit attack, e.g. ``PGD(norm="l2", eps=0.5, steps=100)``.
        path: the output directory (created if needed).
        batch_size: samples per attack call (default: the loader's, else 128).
        shard_size: samples per file; a shard is the unit of resumption and
            is held in memory before it is written.
        eps: budget for every sample, overriding the attack's (a float in the
            model's input space).
        targets: ``None`` (untargeted), a target map (``advkit.targets.shift(1)``,
            ``random()``, ``least_likely()``), or a ``(len(dataset),)`` tensor
            of target classes indexed by dataset index.
        seed: seed of every random draw (random starts, random targets).
        storage: ``"exact"`` or ``"uint8"`` (see above).
        num_workers: data-loading worker processes (default: the loader's, else 0).
        progress: show a progress bar (needs ``tqdm``).

    Returns:
        An `ExportReport` (counts, success rate of the whole dataset).

    Raises:
        ConfigError: bad arguments (a shuffling loader, an iterable dataset,
            targets of the wrong shape, a sample that uint8 storage cannot
            keep inside the ball, ...).
        ManifestMismatchError: ``path`` holds an export of another configuration.
        CorruptDatasetError: a manifest or shard on disk is damaged.

    Example:
        >>> import tempfile
        >>> from torch.utils.data import TensorDataset
        >>> from advkit import PGD, io, wrap
        >>> net = torch.nn.Linear(4, 3)
        >>> data = TensorDataset(torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     report = io.export(wrap(net), data, PGD(norm="l2", eps=0.5, steps=3), d,
        ...                        batch_size=4, shard_size=8)
        ...     adv = io.AdversarialDataset(d)
        ...     (report.num_shards, len(adv), adv[9][0].shape)
        (2, 10, torch.Size([4]))
    """
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack must be an advkit Attack, got {type(attack).__name__}.")
    if storage not in ("exact", "uint8"):
        raise ConfigError(f"storage must be 'exact' or 'uint8', got {storage!r}.")
    shard_size = check_positive_int(shard_size, "shard_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    if isinstance(eps, Tensor):
        raise ConfigError(
            "export takes one float eps for every sample; for a sweep, export once per eps "
            "into separate directories."
        )
    if eps is not None:
        eps = float(check_eps(eps, 1))
    data, collate, batch, workers = _resolve_dataset(dataset, batch_size, num_workers)
    batch = check_positive_int(batch, "batch_size")
    workers = check_positive_int(workers, "num_workers", minimum=0)
    _safetensors_torch()
    clf = model if isinstance(model, Classifier) else wrap(model)
    device = _model_device(clf)
    n = len(data)
    if n == 0:
        raise ConfigError("the dataset is empty: there is nothing to export.")
    effective = attack.eps if eps is None else eps
    if effective is None and not attack.minimal:
        raise ConfigError("this attack needs eps: give it to the attack or to export(eps=...).")

    probe_x, probe_y = _split_batch(collate([data[0]]))
    probe = (probe_x[0], probe_y.reshape(-1)[0])
    if str(probe[0].dtype) not in _INPUT_DTYPES:
        raise ConfigError(
            f"inputs must be floating point in the model's box, got {probe[0].dtype}; "
            "convert them in the dataset (e.g. x.float() / 255)."
        )
    config = _build_config(
        attack=attack,
        model=clf,
        eps=eps,
        targets=targets,
        seed=seed,
        storage=storage,
        shard_size=shard_size,
        n=n,
        probe=probe,
    )
    fp = _fingerprint(config)
    directory = Path(path)
    rank, world = distributed.rank_world()
    directory.mkdir(parents=True, exist_ok=True)
    num_shards = -(-n // shard_size)

    # Every rank reads the same files and reaches the same verdict before any barrier.
    previous: dict[str, Any] | None = None
    if (directory / MANIFEST).exists():
        previous = read_manifest(directory, allow_incomplete=True)
        diff = _config_diff(previous["config"], config)
        if diff:
            raise ManifestMismatchError(
                f"{directory} holds an export made with a different configuration ("
                + "; ".join(diff[:6])
                + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
                + "). Export into another directory, or delete this one to start over."
            )
        if previous["versions"] != {"advkit": __version__, "torch": torch.__version__}:
            warnings.warn(
                f"resuming an export started with {previous['versions']} under advkit "
                f"{__version__} and torch {torch.__version__}: samples attacked now may "
                "differ in the last bits from an uninterrupted run.",
                stacklevel=2,
            )
    done = _scan_shards(directory, num_shards, n, shard_size, config, fp)
    reused = sum(done)
    if previous is not None and previous["complete"] and all(done):
        return ExportReport(
            directory, n, num_shards, 0, reused, int(previous["summary"]["success_count"])
        )
    extra = {"batch_size": batch, "world_size": world}
    if rank == 0:
        _remove_stale_temporaries(directory)
        if previous is None:
            _write_manifest(directory, _manifest_skeleton(config, fp, extra))
    distributed.barrier()

    todo = [s for s in range(num_shards) if not done[s]]
    mine = todo[rank::world]
    written = _attack_shards(
        clf,
        data,
        collate,
        attack,
        directory,
        mine,
        n=n,
        shard_size=shard_size,
        batch=batch,
        workers=workers,
        device=device,
        eps=eps,
        effective=effective,
        targets=targets,
        seed=seed,
        storage=storage,
        fp=fp,
        progress=progress,
    )

    distributed.barrier()
    manifest: dict[str, Any] | None = None
    if rank == 0:
        try:
            manifest = _finalize(directory, config, fp, n, shard_size, extra)
        finally:
            distributed.barrier()  # release the other ranks even if rank 0 failed
    else:
        distributed.barrier()
        manifest = read_manifest(directory, allow_incomplete=True)
        if not manifest["complete"]:
            raise DatasetError(
                f"rank 0 could not finish the manifest of {directory}; see its error."
            )
    return ExportReport(
        directory, n, num_shards, written, reused, int(manifest["summary"]["success_count"])
    )


def _attack_shards(
    clf: Classifier,
    data: Any,
    collate: Callable[[list[Any]], Any],
    attack: Attack,
    directory: Path,
    shards: Sequence[int],
    *,
    n: int,
    shard_size: int,
    batch: int,
    workers: int,
    device: torch.device,
    eps: float | None,
    effective: float | None,
    targets: TargetSpec,
    seed: int,
    storage: str,
    fp: str,
    progress: bool,
) -> int:
    """Attack and write the given shards; returns how many were written."""
    st = _safetensors_torch()
    plan: list[tuple[int, int, int]] = []  # (shard, batch start, batch stop)
    for s in shards:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        plan += [(s, a, min(stop, a + batch)) for a in range(start, stop, batch)]
    if not plan:
        return 0
    loader = DataLoader(
        data,
        batch_sampler=[list(range(a, b)) for _, a, b in plan],
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda" and distributed._on_cpu(data[plan[0][1]]),
    )
    levels = _levels(clf.bounds, torch.float32)  # replaced by the inputs' dtype below
    target_table = targets.to(torch.int64) if isinstance(targets, Tensor) else None
    bar = _progress_bar(len(plan), progress)
    pending: dict[str, list[Tensor]] = {k: [] for k in _FIELDS}
    written = 0
    try:
        for (s, a, b), items in zip(plan, loader, strict=True):
            x, y = _split_batch(items)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            ids = torch.arange(a, b, device=device)
            if x.shape[0] != b - a:
                raise ConfigError(
                    f"the collate function returned {x.shape[0]} samples for a batch of {b - a}."
                )
            if levels.dtype != x.dtype:
                levels = _levels(clf.bounds, x.dtype)
            spec: TargetSpec = targets
            if target_table is not None:
                spec = target_table[a:b].to(device)
            res = attack(
                clf,
                x,
                y,
                targets=spec,
                eps=eps,
                generator=torch.Generator(device=device).manual_seed(seed),
                sample_ids=ids,
            )
            stored, success, distance = _store(res, x, clf, attack, effective, storage, levels)
            tgt = res.targets if res.targets is not None else torch.full_like(y, -1)
            for k, v in zip(
                _FIELDS, (stored, ids, res.labels, tgt, success, distance), strict=True
            ):
                pending[k].append(v.detach().to("cpu"))
            bar.update(1)
            shard_stop = min(n, (s + 1) * shard_size)
            if b == shard_stop:
                tensors = {k: torch.cat(v).contiguous() for k, v in pending.items()}
                for k in ("index", "label", "target"):
                    tensors[k] = tensors[k].to(torch.int64)
                pending = {k: [] for k in _FIELDS}
                meta = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "config_sha256": fp,
                    "shard": s,
                    "start": s * shard_size,
                    "stop": shard_stop,
                    "payload_sha256": _payload_sha256(tensors),
                }
                # One metadata key: safetensors writes metadata in an arbitrary key order,
                # and a single key keeps the file's bytes (and its checksum) reproducible.
                blob = st.save(tensors, metadata={"advkit": json.dumps(meta, sort_keys=True)})
                _atomic_write(directory / _shard_name(s), blob)
                written += 1
    finally:
        bar.close()
    return written


def _store(
    res: Any,
    x0: Tensor,
    clf: Classifier,
    attack: Attack,
    eps: float | None,
    storage: str,
    levels: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """What is written for one batch: (x_adv or codes, success, distance) of the stored example."""
    if storage == "exact":
        return res.x_adv, res.success, res.distance
    q = _quantize(res.x_adv, x0, attack.norm, eps, clf.bounds, levels)
    lv = levels.to(x0.device)
    v = lv[q]
    with torch.no_grad(), model_guard(clf):
        pred = clf(v).argmax(dim=1)
    success = pred == res.targets if res.targets is not None else pred != res.labels
    distance = attack.norm.measure(v - x0)
    if attack.minimal:
        distance = torch.where(success, distance, torch.full_like(distance, math.inf))
    return q.to(torch.uint8), success, distance


class _NoBar:
    def update(self, k: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        raise ConfigError("progress=True needs the tqdm package: pip install tqdm.") from None
    rank, world = distributed.rank_world()
    desc = "export" if world == 1 else f"export (rank {rank})"
    return tqdm(total=total, desc=desc, unit="batch", position=rank)


# --------------------------------------------------------------------------- loading


def _stored_dtype(manifest: Mapping[str, Any]) -> torch.dtype:
    """The clean inputs' dtype recorded in the manifest."""
    return _dtype_named(manifest["config"]["dataset"]["dtype"])


class _Shard:
    """An open shard: the small per-sample fields in memory, ``x_adv`` memory-mapped."""

    def __init__(self, handle: Any, small: dict[str, Tensor]) -> None:
        self.handle = handle
        self.small = small


class AdversarialDataset(Dataset[tuple[Tensor, Tensor]]):
    """An adversarial dataset written by `export`, as a ``torch.utils.data.Dataset``.

    ``dataset[i]`` is the pair ``(x_adv, y)`` for clean dataset index ``i``:

    * ``x_adv``: the stored example, shape ``sample_shape``, in the clean
      inputs' dtype (``uint8`` storage is decoded to the grey levels of the
      model's box);
    * ``y``: a 0-d int64 tensor, the true label (``relabel="label"``) or the
      attack's target class (``relabel="target"``: the "non-robust features"
      dataset of Ilyas et al., NeurIPS 2019, trains on adversarial examples
      labelled with their target).

    Every stored field of a sample (``index``, ``label``, ``target``,
    ``success``, ``distance``) is available through `record`.

    Shards are opened lazily (memory-mapped; only the rows asked for are read)
    and, with ``verify=True``, each shard file's SHA-256 is checked against
    the manifest the first time this process opens it. The object can be sent
    to DataLoader worker processes.

    Args:
        path: the directory `export` wrote.
        relabel: ``"label"`` or ``"target"`` (see above; ``"target"`` needs a
            targeted export).
        verify: check shard checksums (one read of each shard file).

    Raises:
        DatasetError: no manifest, or an unfinished export.
        CorruptDatasetError: a damaged manifest or shard (when it is opened).
        ConfigError: ``relabel="target"`` for an untargeted export.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        relabel: Literal["label", "target"] = "label",
        verify: bool = True,
        max_open_shards: int = 64,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if relabel not in ("label", "target"):
            raise ConfigError(f"relabel must be 'label' or 'target', got {relabel!r}.")
        if relabel == "target" and self.manifest["config"]["call"]["targets"] is None:
            raise ConfigError(
                "relabel='target' needs a targeted export (export(..., targets=...)); this one "
                "is untargeted, so its samples have no target class. Use relabel='label'."
            )
        self.relabel = relabel
        self.verify = verify
        self.max_open_shards = check_positive_int(max_open_shards, "max_open_shards")
        cfg = self.manifest["config"]
        self.storage: str = cfg["storage"]
        self.dtype = _stored_dtype(self.manifest)
        self.sample_shape = tuple(int(v) for v in cfg["dataset"]["sample_shape"])
        self.shard_size = int(cfg["shard_size"])
        self._n = int(cfg["dataset"]["length"])
        bounds = cfg["model"]["bounds"]
        self._levels = _levels((float(bounds[0]), float(bounds[1])), self.dtype)
        self._open: OrderedDict[int, _Shard] = OrderedDict()

    def __len__(self) -> int:
        return self._n

    @property
    def targeted(self) -> bool:
        """Whether the export was targeted (then every ``target`` is a class, else -1)."""
        return self.manifest["config"]["call"]["targets"] is not None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # file handles stay in the process that opened them
        return state

    def _shard(self, s: int) -> _Shard:
        shard = self._open.get(s)
        if shard is not None:
            self._open.move_to_end(s)
            return shard
        from safetensors import safe_open

        entry = self.manifest["shards"][s]
        file = self.path / entry["file"]
        if not file.is_file():
            raise CorruptDatasetError(f"shard file {file} listed in the manifest is missing.")
        if self.verify and _sha256_file(file) != entry["sha256"]:
            raise CorruptDatasetError(
                f"shard file {file} does not match its checksum in the manifest (the file was "
                "modified or damaged); restore it, or delete it and run advkit.io.export again "
                "with the same arguments to recompute it."
            )
        stored = torch.uint8 if self.storage == "uint8" else self.dtype
        _check_shard_header(
            file,
            s,
            int(entry["start"]),
            int(entry["stop"]),
            self.manifest["config_sha256"],
            _ST_DTYPES[stored],
            self.sample_shape,
        )
        handle: Any = safe_open(str(file), framework="pt")
        small = {k: handle.get_tensor(k) for k in _FIELDS if k != "x_adv"}
        shard = _Shard(handle, small)
        self._open[s] = shard
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return shard

    def _locate(self, i: int) -> tuple[_Shard, int]:
        i = int(i)
        if not -self._n <= i < self._n:
            raise IndexError(f"index {i} out of range for a dataset of {self._n} samples.")
        i %= self._n
        return self._shard(i // self.shard_size), i % self.shard_size

    def _decode(self, x: Tensor) -> Tensor:
        if self.storage == "uint8":
            return self._levels[x.to(torch.int64)]
        return x

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        shard, row = self._locate(i)
        x = self._decode(shard.handle.get_slice("x_adv")[row : row + 1])[0]
        return x, shard.small[self.relabel][row]

    def column(self, name: str) -> Tensor:
        """One per-sample field for the whole dataset, ``(N,)``, in dataset order.

        ``name`` is ``"index"``, ``"label"``, ``"target"``, ``"success"`` or
        ``"distance"``; e.g. ``Subset(ds, ds.column("success").nonzero().flatten().tolist())``
        keeps the samples whose stored example is adversarial. Opens every shard.
        """
        if name not in _FIELDS or name == "x_adv":
            raise ConfigError(
                f"column() reads one of {_FIELDS[1:]}, got {name!r}; use ds[i] or load() for x_adv."
            )
        return torch.cat([self._shard(s).small[name] for s in range(len(self.manifest["shards"]))])

    def record(self, i: int) -> dict[str, Tensor]:
        """Every stored field of sample ``i``: ``x_adv`` (decoded), ``index``, ``label``,
        ``target`` (-1 if untargeted), ``success``, ``distance``."""
        shard, row = self._locate(i)
        out = {k: v[row] for k, v in shard.small.items()}
        out["x_adv"] = self._decode(shard.handle.get_slice("x_adv")[row : row + 1])[0]
        return out


def load(path: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Tensor]:
    """Every field of an adversarial dataset as whole tensors, in dataset order.

    Args:
        path: the directory `export` wrote.
        verify: check each shard file's SHA-256 against the manifest.

    Returns:
        ``{"x_adv": (N, ...), "index": (N,), "label": (N,), "target": (N,),
        "success": (N,), "distance": (N,)}``; ``x_adv`` in the clean inputs'
        dtype (``uint8`` storage decoded), ``target`` -1 for an untargeted export.

    Raises:
        DatasetError, CorruptDatasetError: see `AdversarialDataset`.
    """
    directory = Path(path)
    manifest = read_manifest(directory)
    st = _safetensors_torch()
    dtype = _stored_dtype(manifest)
    cfg = manifest["config"]
    stored = torch.uint8 if cfg["storage"] == "uint8" else dtype
    parts: dict[str, list[Tensor]] = {k: [] for k in _FIELDS}
    for s, entry in enumerate(manifest["shards"]):
        file = directory / entry["file"]
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CorruptDatasetError(f"cannot read shard file {file} ({err}).") from None
        if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise CorruptDatasetError(
                f"shard file {file} does not match its checksum in the manifest (the file was "
                "modified or damaged)."
            )
        _check_shard_header(
            file,
            s,
            int(entry["start"]),
            int(entry["stop"]),
            manifest["config_sha256"],
            _ST_DTYPES[stored],
            cfg["dataset"]["sample_shape"],
        )
        tensors = st.load(data)
        for k in _FIELDS:
            parts[k].append(tensors[k])
    out = {k: torch.cat(v) for k, v in parts.items()}
    if cfg["storage"] == "uint8":
        bounds = cfg["model"]["bounds"]
        out["x_adv"] = _levels((float(bounds[0]), float(bounds[1])), dtype)[
            out["x_adv"].to(torch.int64)
        ]
    return out
