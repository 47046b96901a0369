"""Loading: an exported directory as a ``torch.utils.data.Dataset`` (`AdversarialDataset`,
memory-mapped, shard by shard) or as whole tensors (`load`)."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from advkit._quantize import levels
from advkit.checks import ConfigError, check_positive_int
from advkit.io._errors import CorruptDatasetError
from advkit.io._hashing import sha256_file
from advkit.io._manifest import read_manifest, stored_dtype
from advkit.io._shards import FIELDS, SAFETENSORS_DTYPES, check_shard_header, safetensors_torch

__all__ = ["AdversarialDataset", "load"]


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
        self.dtype = stored_dtype(self.manifest)
        self.sample_shape = tuple(int(v) for v in cfg["dataset"]["sample_shape"])
        self.shard_size = int(cfg["shard_size"])
        self._n = int(cfg["dataset"]["length"])
        bounds = cfg["model"]["bounds"]
        self._levels = levels((float(bounds[0]), float(bounds[1])), self.dtype)
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
        if self.verify and sha256_file(file) != entry["sha256"]:
            raise CorruptDatasetError(
                f"shard file {file} does not match its checksum in the manifest (the file was "
                "modified or damaged); restore it, or delete it and run advkit.io.export again "
                "with the same arguments to recompute it."
            )
        stored = torch.uint8 if self.storage == "uint8" else self.dtype
        check_shard_header(
            file,
            s,
            int(entry["start"]),
            int(entry["stop"]),
            self.manifest["config_sha256"],
            SAFETENSORS_DTYPES[stored],
            self.sample_shape,
        )
        handle: Any = safe_open(str(file), framework="pt")
        small = {k: handle.get_tensor(k) for k in FIELDS if k != "x_adv"}
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
        if name not in FIELDS or name == "x_adv":
            raise ConfigError(
                f"column() reads one of {FIELDS[1:]}, got {name!r}; use ds[i] or load() for x_adv."
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
    st = safetensors_torch()
    dtype = stored_dtype(manifest)
    cfg = manifest["config"]
    stored = torch.uint8 if cfg["storage"] == "uint8" else dtype
    parts: dict[str, list[Tensor]] = {k: [] for k in FIELDS}
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
        check_shard_header(
            file,
            s,
            int(entry["start"]),
            int(entry["stop"]),
            manifest["config_sha256"],
            SAFETENSORS_DTYPES[stored],
            cfg["dataset"]["sample_shape"],
        )
        tensors = st.load(data)
        for k in FIELDS:
            parts[k].append(tensors[k])
    out = {k: torch.cat(v) for k, v in parts.items()}
    if cfg["storage"] == "uint8":
        bounds = cfg["model"]["bounds"]
        out["x_adv"] = levels((float(bounds[0]), float(bounds[1])), dtype)[
            out["x_adv"].to(torch.int64)
        ]
    return out
