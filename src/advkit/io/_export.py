"""Export: attack every sample of a dataset, shard by shard, on one process or under
``torchrun``, resumable after a kill, refusing to mix configurations."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from advkit import _data, distributed
from advkit._quantize import levels, quantize
from advkit._version import __version__
from advkit.attacks.base import Attack, TargetSpec
from advkit.checks import ConfigError, check_eps, check_positive_int
from advkit.io._errors import CorruptDatasetError, DatasetError, ManifestMismatchError
from advkit.io._hashing import (
    config_sha256,
    describe_attack,
    describe_callable,
    jsonable,
    model_sha256,
    payload_sha256,
    tensor_bytes,
    unverified_fields,
)
from advkit.io._manifest import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_DTYPES,
    MANIFEST,
    config_diff,
    dtype_named,
    manifest_skeleton,
    read_manifest,
    write_manifest,
)
from advkit.io._shards import (
    FIELDS,
    SAFETENSORS_DTYPES,
    atomic_write,
    check_shard_header,
    read_header,
    remove_stale_temporaries,
    safetensors_torch,
    shard_name,
)
from advkit.models import Classifier, model_guard, wrap
from advkit.norms import L1, L2, Linf, Norm
from advkit.result import AttackResult, is_success

__all__ = ["ExportReport", "Storage", "export", "quantize_stored"]

Storage = Literal["exact", "uint8"]
"""``"exact"``: the examples in the inputs' dtype, bit for bit; ``"uint8"``: one
byte per coordinate, re-projected into the ball and the box (see `export`)."""


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


# --------------------------------------------------------------------------- uint8 storage


def quantize_stored(
    x_adv: Tensor,
    x0: Tensor,
    norm: Norm,
    eps: float | None,
    bounds: tuple[float, float],
    table: Tensor,
) -> Tensor:
    """The uint8 codes (int64 in ``[0, 255]``) ``export`` stores for ``x_adv``, inside the ball.

    `advkit._quantize.quantize` for the attack's norm (Linf, L2 or L1);
    feasibility is checked with that norm's own measure, in float64.

    Raises:
        ConfigError: another norm, or no grid point lies in the ball for some
            sample (the clean input is off the grid and ``eps`` is smaller
            than its own rounding error); store with ``storage="exact"`` instead.
    """
    if not isinstance(norm, (Linf, L2, L1)):
        raise ConfigError(
            f"storage='uint8' supports the linf, l2 and l1 threat models, not {norm!r}; "
            "use storage='exact'."
        )
    codes, inside = quantize(x_adv, x0, p=norm.p, eps=eps, bounds=bounds, table=table)
    if not bool(inside.all()):
        count = int((~inside).sum())
        raise ConfigError(
            f"storage='uint8' cannot store {count} sample(s) of this batch inside the "
            f"{norm.name} ball of radius {eps:g}: no point of the 256-level grid of the box "
            "lies that close to their clean inputs (the clean inputs are not on the grid and "
            "eps is smaller than their own rounding error). Use storage='exact', a larger "
            "eps, or clean inputs quantized to the grid."
        )
    return codes


def _store(
    res: AttackResult,
    x0: Tensor,
    clf: Classifier,
    attack: Attack,
    eps: float | None,
    storage: str,
    table: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """What is written for one batch: (x_adv or codes, success, distance) of the stored example.

    ``"exact"`` stores the attack's own ``x_adv``, ``success`` and ``distance``.
    ``"uint8"`` stores the grid point `quantize_stored` picks; where it equals
    the attack's ``x_adv`` the attack's own verdict and distance are kept,
    elsewhere the point moved and is scored anew: one forward pass (no grad,
    the model guarded as in the attack) on the decoded points, judged by
    `advkit.result.is_success`, the rule every attack applies, and measured
    with the attack's norm; a minimal-norm attack's distance is ``inf`` where
    the stored point is not adversarial.
    """
    if storage == "exact":
        return res.x_adv, res.success, res.distance
    codes = quantize_stored(res.x_adv, x0, attack.norm, eps, clf.bounds, table)
    stored = table.to(x0.device)[codes]
    moved = (stored != res.x_adv).flatten(1).any(dim=1)
    success, distance = res.success, res.distance
    if bool(moved.any()):
        with torch.no_grad(), model_guard(clf):
            logits = clf(stored)
        rescored = is_success(logits, res.labels, res.targets)
        # as the attacks measure it: from the exact differences, in float64
        measured = attack.norm.measure(stored.double() - x0.double()).to(distance.dtype)
        if attack.minimal:
            measured = torch.where(rescored, measured, torch.full_like(measured, math.inf))
        success = torch.where(moved, rescored, success)
        distance = torch.where(moved, measured, distance)
    return codes.to(torch.uint8), success, distance


# --------------------------------------------------------------------------- configuration


def _targets_entry(targets: TargetSpec, n: int) -> Any:
    if targets is None:
        return None
    if isinstance(targets, Tensor):
        if targets.shape != (n,) or targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise ConfigError(
                f"a tensor of targets for export must hold one integer class per dataset "
                f"sample, shape ({n},), got {targets.dtype} of shape {tuple(targets.shape)}."
            )
        return {"tensor_sha256": payload_sha256({"t": targets.to(torch.int64)})}
    if not callable(targets):
        raise ConfigError(
            "targets must be None, a tensor of classes (one per dataset sample) or a target "
            f"map such as advkit.targets.shift(1), got {type(targets).__name__}."
        )
    return {"map": describe_callable(targets)}


def _stat(t: Tensor | None) -> list[float] | None:
    return None if t is None else [float(v) for v in t.reshape(-1).tolist()]


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
    h.update(tensor_bytes(x0))
    h.update(tensor_bytes(y0.to(torch.int64)))
    effective = attack.eps if eps is None else eps
    return {
        "attack": describe_attack(attack),
        "call": {
            "eps": jsonable(eps),
            "effective_eps": jsonable(effective),
            "targets": _targets_entry(targets, n),
            "seed": seed,
        },
        "model": {
            "bounds": list(model.bounds),
            "mean": _stat(model.mean),
            "std": _stat(model.std),
            "parameters_sha256": model_sha256(model),
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
    directory: Path,
    num_shards: int,
    n: int,
    shard_size: int,
    config: dict[str, Any],
    fingerprint: str,
) -> list[bool]:
    dataset = config["dataset"]
    x_dtype = torch.uint8 if config["storage"] == "uint8" else dtype_named(dataset["dtype"])
    done = []
    for s in range(num_shards):
        file = directory / shard_name(s)
        if file.exists():
            start, stop = s * shard_size, min(n, (s + 1) * shard_size)
            check_shard_header(
                file,
                s,
                start,
                stop,
                fingerprint,
                SAFETENSORS_DTYPES[x_dtype],
                dataset["sample_shape"],
            )
        done.append(file.exists())
    return done


def _finalize(
    directory: Path,
    config: dict[str, Any],
    fingerprint: str,
    n: int,
    shard_size: int,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Verify every shard and write the complete manifest (rank 0 only)."""
    st = safetensors_torch()
    entries = []
    success = 0
    for s in range(-(-n // shard_size)):
        file = directory / shard_name(s)
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        if not file.exists():
            raise CorruptDatasetError(
                f"shard file {file} is missing after every rank finished; run advkit.io.export "
                "again with the same arguments to recompute it."
            )
        _, meta = read_header(file)
        data = file.read_bytes()
        tensors = st.load(data)
        if payload_sha256(tensors) != meta.get("payload_sha256"):
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
    manifest = manifest_skeleton(config, fingerprint, extra)
    manifest["complete"] = True
    manifest["shards"] = entries
    manifest["summary"] = {"num_samples": n, "success_count": success}
    write_manifest(directory, manifest)
    return manifest


# --------------------------------------------------------------------------- export


def export(
    model: nn.Module,
    dataset: Dataset[Any] | DataLoader[Any],
    attack: Attack,
    path: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    shard_size: int = 1024,
    eps: float | Tensor | None = None,
    targets: TargetSpec = None,
    seed: int = 0,
    storage: Storage = "exact",
    num_workers: int | None = None,
    progress: bool | None = False,
    trust_callables: bool = False,
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
    there first. Integer labels of any dtype are read as ``int64``. The
    global RNG is never drawn from (the loader's worker seeds come from
    ``seed``).

    **Resuming.** Run the same call again after a crash, a SIGKILL or a
    pre-emption: shards already on disk are kept (each was renamed into place
    only once complete), the others are attacked, and the result equals an
    uninterrupted run's sample for sample. A directory written with another
    configuration (attack settings and objective, eps, targets, seed, model
    weights or bounds, dataset length, dtype or first sample, storage, shard
    size) is refused, never mixed. A finished export is returned at once.
    Objectives and target maps are fingerprinted by what they compute (the
    code, arguments, closure and globals of a lambda, closure or
    ``functools.partial``; a function importable by name, by that name); one
    that reaches something that cannot be read that way cannot be shown to be
    the one the shards on disk were made with, and resuming with it is refused
    unless ``trust_callables=True`` (see the user guide).

    **Storage.** ``"exact"`` keeps ``x_adv`` bit for bit in the inputs' dtype,
    with the attack's own ``success`` and ``distance``. ``"uint8"`` stores one
    of the 256 levels ``low + k (high - low) / 255`` of the model's box per
    coordinate and guarantees, for each stored example ``v`` with clean input
    ``x0``, that ``low <= v <= high`` and ``norm.measure(v - x0) <= eps`` (the
    library's measure, compared with eps in float64), as long as some grid
    point lies in the ball: always when ``x0`` is on the grid (e.g. 8-bit
    images scaled by 1/255) and, for Linf, whenever eps is at least half a
    level. Rounding is fixed up where it left the ball (see the user guide).
    Where the stored point equals the attack's ``x_adv`` the attack's own
    ``success`` and ``distance`` are kept; where it moved they are computed
    anew on the stored point, with one forward pass and the attack's success
    rule (`advkit.result.is_success`).

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
            ``DataLoader`` over one (its collate function and worker settings
            are used, and its ``batch_size`` and ``num_workers`` unless given here).
        attack: any advkit attack, e.g. ``PGD(norm="l2", eps=0.5, steps=100)``.
        path: the output directory (created if needed).
        batch_size: samples per attack call (default: the loader's, else 128).
        shard_size: samples per file; a shard is the unit of resumption and
            is held in memory before it is written.
        eps: budget for every sample, overriding the attack's (a number, or a
            0-d tensor, in the model's input space).
        targets: ``None`` (untargeted), a target map (``advkit.targets.shift(1)``,
            ``random()``, ``least_likely()``), or a ``(len(dataset),)`` tensor
            of target classes indexed by dataset index.
        seed: seed of every random draw (random starts, random targets, the
            data loader's workers).
        storage: ``"exact"`` or ``"uint8"`` (see above).
        num_workers: data-loading worker processes (default: the loader's, else 0).
        progress: a progress bar on stderr over this process's samples (tqdm):
            ``False`` (default) never; ``None`` when tqdm is installed and
            stderr is a terminal; ``True`` the same, but a missing tqdm raises
            ``ImportError``. Only rank 0 shows it.
        trust_callables: resume even if the attack's objective or the target
            map cannot be fingerprinted (see Resuming).

    Returns:
        An `ExportReport` (counts, success rate of the whole dataset).

    Raises:
        ConfigError: bad arguments (a shuffling loader, targets of the wrong
            shape, a sample that uint8 storage cannot keep inside the ball, ...).
        InputError: not a map-style dataset (e.g. an iterable one), an empty
            one, or items that are not ``(input, label, ...)``.
        ManifestMismatchError: ``path`` holds an export of another
            configuration, or one whose objective or target map cannot be
            verified (without ``trust_callables``).
        CorruptDatasetError: a manifest or shard on disk is damaged.
        ImportError: safetensors is missing, or tqdm with ``progress=True``.

    Examples:
        >>> import tempfile
        >>> from torch.utils.data import TensorDataset
        >>> from advkit import PGD, io, wrap
        >>> net = torch.nn.Linear(4, 3)
        >>> data = TensorDataset(torch.rand(10, 4), torch.randint(0, 3, (10,)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     report = io.export(wrap(net), data, PGD(norm="l2", eps=0.5, steps=3), d,
        ...                        batch_size=4, shard_size=8)
        ...     adv = io.AdversarialDataset(d)
        ...     x_adv, label = adv[9]
        ...     (report.num_shards, len(adv), x_adv.shape)
        (2, 10, torch.Size([4]))
    """
    if not isinstance(attack, Attack):
        raise ConfigError(f"attack must be an advkit Attack, got {type(attack).__name__}.")
    if storage not in ("exact", "uint8"):
        raise ConfigError(f"storage must be 'exact' or 'uint8', got {storage!r}.")
    shard_size = check_positive_int(shard_size, "shard_size")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    if isinstance(eps, Tensor) and eps.ndim > 0:
        raise ConfigError(
            "export takes one float eps for every sample; for a sweep, export once per eps "
            "into separate directories."
        )
    budget = None if eps is None else float(check_eps(eps, 1))
    source = _data.resolve(
        dataset, batch_size=batch_size, num_workers=num_workers, caller="export", shard=False
    )
    safetensors_torch()
    clf = model if isinstance(model, Classifier) else wrap(model)
    device = _data.model_device(clf)
    n = source.length
    effective = attack.eps if budget is None else budget
    if effective is None and not attack.minimal:
        raise ConfigError("this attack needs eps: give it to the attack or to export(eps=...).")

    probe_x, probe_y = _data.unpack(source.collate_fn([source.dataset[0]]))
    probe = (probe_x[0], probe_y.reshape(-1)[0])
    if str(probe[0].dtype) not in INPUT_DTYPES:
        raise ConfigError(
            f"inputs must be floating point in the model's box, got {probe[0].dtype}; "
            "convert them in the dataset (e.g. x.float() / 255)."
        )
    config = _build_config(
        attack=attack,
        model=clf,
        eps=budget,
        targets=targets,
        seed=seed,
        storage=storage,
        shard_size=shard_size,
        n=n,
        probe=probe,
    )
    fingerprint = config_sha256(config)
    directory = Path(path)
    rank, world = distributed.rank_world()
    directory.mkdir(parents=True, exist_ok=True)
    num_shards = -(-n // shard_size)

    # Every rank reads the same files and reaches the same verdict before any barrier.
    previous: dict[str, Any] | None = None
    if (directory / MANIFEST).exists():
        previous = read_manifest(directory, allow_incomplete=True)
        diff = config_diff(previous["config"], config)
        if diff:
            raise ManifestMismatchError(
                f"{directory} holds an export made with a different configuration ("
                + "; ".join(diff[:6])
                + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
                + "). Export into another directory, or delete this one to start over."
            )
    done = _scan_shards(directory, num_shards, n, shard_size, config, fingerprint)
    reused = sum(done)
    unverified = unverified_fields(config)
    if (previous is not None or reused) and unverified and not trust_callables:
        raise ManifestMismatchError(
            f"{directory} holds an export that this call would resume, but advkit cannot "
            f"verify that its {' and '.join(unverified)} compute what they computed then "
            "(they reach objects it cannot fingerprint: "
            + "; ".join(_unverified_reasons(config, unverified))
            + "). Pass trust_callables=True if they do, or export into another directory."
        )
    if previous is not None and previous["versions"] != {
        "advkit": __version__,
        "torch": torch.__version__,
    }:
        warnings.warn(
            f"resuming an export started with {previous['versions']} under advkit "
            f"{__version__} and torch {torch.__version__}: samples attacked now may "
            "differ in the last bits from an uninterrupted run.",
            stacklevel=2,
        )
    if previous is not None and previous["complete"] and all(done):
        return ExportReport(
            directory, n, num_shards, 0, reused, int(previous["summary"]["success_count"])
        )
    extra = {"batch_size": source.batch_size, "world_size": world}
    if rank == 0:
        remove_stale_temporaries(directory, MANIFEST)
        if previous is None:
            write_manifest(directory, manifest_skeleton(config, fingerprint, extra))
    distributed.barrier()

    todo = [s for s in range(num_shards) if not done[s]]
    mine = todo[rank::world]
    written = _attack_shards(
        clf,
        source,
        attack,
        directory,
        mine,
        n=n,
        shard_size=shard_size,
        device=device,
        eps=budget,
        effective=effective,
        targets=targets,
        seed=seed,
        storage=storage,
        fingerprint=fingerprint,
        progress=progress,
    )

    distributed.barrier()
    manifest: dict[str, Any] | None = None
    if rank == 0:
        try:
            manifest = _finalize(directory, config, fingerprint, n, shard_size, extra)
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


def _unverified_reasons(config: dict[str, Any], fields: Sequence[str]) -> list[str]:
    out = []
    for path in fields:
        entry: Any = config
        for key in path.split("."):
            entry = entry[int(key)] if isinstance(entry, list) else entry[key]
        out.append(f"{entry['callable']} reads {entry['unverified']}")
    return out


def _attack_shards(
    clf: Classifier,
    source: _data.Source,
    attack: Attack,
    directory: Path,
    shards: Sequence[int],
    *,
    n: int,
    shard_size: int,
    device: torch.device,
    eps: float | None,
    effective: float | None,
    targets: TargetSpec,
    seed: int,
    storage: str,
    fingerprint: str,
    progress: bool | None,
) -> int:
    """Attack and write the given shards; returns how many were written."""
    st = safetensors_torch()
    plan: list[list[int]] = []  # batches of dataset indices, cut at shard boundaries
    ends: list[int] = []  # the shard each batch belongs to
    for s in shards:
        start, stop = s * shard_size, min(n, (s + 1) * shard_size)
        for a in range(start, stop, source.batch_size):
            plan.append(list(range(a, min(stop, a + source.batch_size))))
            ends.append(s)
    if not plan:
        return 0
    table = levels(clf.bounds, torch.float32)  # replaced by the inputs' dtype below
    target_table = targets.to(torch.int64) if isinstance(targets, Tensor) else None
    bar = _data.Progress(progress, total=sum(map(len, plan)), desc="export")
    pending: dict[str, list[Tensor]] = {k: [] for k in FIELDS}
    written = 0
    try:
        batches = _data.load_batches(source, plan, device=device, seed=seed)
        for s, idx, (ids, x, y) in zip(ends, plan, batches, strict=True):
            if table.dtype != x.dtype:
                table = levels(clf.bounds, x.dtype)
            spec: TargetSpec = targets
            if target_table is not None:
                spec = target_table[idx[0] : idx[-1] + 1].to(device)
            res = attack(
                clf,
                x,
                y,
                targets=spec,
                eps=eps,
                generator=torch.Generator(device=device).manual_seed(seed),
                sample_ids=ids,
            )
            stored, success, distance = _store(res, x, clf, attack, effective, storage, table)
            tgt = res.targets if res.targets is not None else torch.full_like(res.labels, -1)
            for k, v in zip(FIELDS, (stored, ids, res.labels, tgt, success, distance), strict=True):
                pending[k].append(v.detach().to("cpu"))
            bar.update(len(idx))
            shard_stop = min(n, (s + 1) * shard_size)
            if idx[-1] + 1 == shard_stop:
                tensors = {k: torch.cat(v).contiguous() for k, v in pending.items()}
                for k in ("index", "label", "target"):
                    tensors[k] = tensors[k].to(torch.int64)
                pending = {k: [] for k in FIELDS}
                meta = {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "config_sha256": fingerprint,
                    "shard": s,
                    "start": s * shard_size,
                    "stop": shard_stop,
                    "payload_sha256": payload_sha256(tensors),
                }
                # One metadata key: safetensors writes metadata in an arbitrary key order,
                # and a single key keeps the file's bytes (and its checksum) reproducible.
                blob = st.save(tensors, metadata={"advkit": json.dumps(meta, sort_keys=True)})
                atomic_write(directory / shard_name(s), blob)
                written += 1
    finally:
        bar.close()
    return written
