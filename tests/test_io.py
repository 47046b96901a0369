"""advkit.io: export adversarial datasets to safetensors shards, resume, load back."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

import advkit
from advkit import io as advio
from advkit.io import _levels, _quantize

from ._io_worker import BATCH, SHARD, Data, N, make_attack, make_model, run

WORKER = Path(__file__).resolve().parent / "_io_worker.py"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models: one thread is faster (no spinning on a busy machine) and matches the
    worker processes, which run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reference(model: advkit.Classifier, data: Data, attack: advkit.Attack, **call: Any) -> dict:
    """The attack called on the export's own batches (shard-aligned), concatenated."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("x_adv", "success", "distance", "t")}
    for s0 in range(0, len(data), SHARD):
        for a in range(s0, min(len(data), s0 + SHARD), BATCH):
            b = min(a + BATCH, s0 + SHARD, len(data))
            res = attack(
                model,
                data.x[a:b],
                data.y[a:b],
                generator=torch.Generator().manual_seed(5),
                sample_ids=torch.arange(a, b),
                **call,
            )
            out["x_adv"].append(res.x_adv)
            out["success"].append(res.success)
            out["distance"].append(res.distance)
            out["t"].append(res.targets if res.targets is not None else torch.full((b - a,), -1))
    return {k: torch.cat(v) for k, v in out.items()}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("targets", [None, advkit.targets.shift(1), advkit.targets.random()])
def test_exact_round_trip_equals_attack_output(tmp_path: Path, targets: Any) -> None:
    report = run(tmp_path, targets=targets)
    assert (report.num_samples, report.num_shards, report.shards_written) == (N, 6, 6)
    ref = _reference(make_model(), Data(), make_attack(), targets=targets)
    got = advio.load(tmp_path)
    assert torch.equal(got["x_adv"], ref["x_adv"])  # bit for bit, input dtype
    assert got["x_adv"].dtype == torch.float32
    assert torch.equal(got["success"], ref["success"])
    assert torch.equal(got["distance"], ref["distance"])
    assert torch.equal(got["target"], ref["t"])
    assert torch.equal(got["index"], torch.arange(N))
    assert torch.equal(got["label"], Data().y)
    assert report.success_count == int(ref["success"].sum())

    ds = advio.AdversarialDataset(tmp_path)
    assert len(ds) == N
    for i in (0, 7, 8, 44, -1):
        x, y = ds[i]
        assert torch.equal(x, ref["x_adv"][i])
        assert int(y) == int(Data().y[i])
        rec = ds.record(i)
        assert int(rec["index"]) == i % N
        assert bool(rec["success"]) == bool(ref["success"][i])
    with pytest.raises(IndexError):
        ds[N]
    assert torch.equal(ds.column("success"), ref["success"])
    assert torch.equal(ds.column("index"), torch.arange(N))
    with pytest.raises(advkit.ConfigError, match="column"):
        ds.column("x_adv")
    if targets is None:
        assert not ds.targeted
        with pytest.raises(advkit.ConfigError, match="targeted export"):
            advio.AdversarialDataset(tmp_path, relabel="target")
    else:
        relabelled = advio.AdversarialDataset(tmp_path, relabel="target")
        assert torch.equal(torch.stack([relabelled[i][1] for i in range(N)]), ref["t"])
        assert bool((ref["t"] != Data().y).all())


def test_batch_size_and_shard_size_do_not_change_samples(tmp_path: Path) -> None:
    """Keyed randomness: a sample's result depends on (seed, index), not on its batch."""
    run(tmp_path / "a")
    run(tmp_path / "b", batch_size=7, shard_size=10)  # 45 = 4 * 10 + 5, batches cut shards
    run(tmp_path / "c", batch_size=100, shard_size=100)  # one shard, one batch
    a, b, c = (advio.load(tmp_path / k) for k in "abc")
    for other in (b, c):
        torch.testing.assert_close(other["x_adv"], a["x_adv"], atol=1e-6, rtol=0)
        assert torch.equal(other["target"], a["target"])
        assert torch.equal(other["index"], torch.arange(N))


def test_dataloader_and_workers(tmp_path: Path) -> None:
    data = Data()
    run(tmp_path / "ds")
    loader = DataLoader(data, batch_size=BATCH, shuffle=False)
    advio.export(
        make_model(),
        loader,
        make_attack(),
        tmp_path / "dl",
        shard_size=SHARD,
        targets=advkit.targets.random(),
        seed=5,
    )
    a, b = advio.load(tmp_path / "ds"), advio.load(tmp_path / "dl")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the dataset goes to DataLoader worker processes (no open file handles pickled)
    ds = advio.AdversarialDataset(tmp_path / "dl", relabel="target")
    ds[0]  # opens a shard in this process first
    xs, ys = next(iter(DataLoader(ds, batch_size=N, num_workers=1)))
    assert torch.equal(xs, a["x_adv"])
    assert torch.equal(ys, a["target"])


def test_refuses_shuffling_loader_and_iterable_dataset(tmp_path: Path) -> None:
    with pytest.raises(advkit.ConfigError, match="shuffle=False"):
        advio.export(
            make_model(), DataLoader(Data(), shuffle=True), make_attack(), tmp_path, shard_size=8
        )

    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield from zip(Data().x, Data().y, strict=True)

    # bad data is an InputError, bad settings a ConfigError, as in evaluate (one data layer)
    with pytest.raises(advkit.InputError, match="map-style"):
        advio.export(make_model(), Stream(), make_attack(), tmp_path)
    with pytest.raises(advkit.ConfigError, match="storage"):
        run(tmp_path, storage="float16")
    with pytest.raises(advkit.ConfigError, match="one integer class per dataset"):
        run(tmp_path, targets=torch.zeros(3, dtype=torch.long))
    assert not (tmp_path / "manifest.json").exists()


def test_explicit_target_tensor_and_minimal_norm_attack(tmp_path: Path) -> None:
    data = Data()
    t = (data.y + 2) % 4
    run(tmp_path / "t", targets=t)
    got = advio.load(tmp_path / "t")
    assert torch.equal(got["target"], t)
    # DeepFool without eps: distance is inf exactly where it failed
    advio.export(
        make_model(), data, advkit.DeepFool(norm="l2"), tmp_path / "df", batch_size=4, shard_size=8
    )
    df = advio.load(tmp_path / "df")
    assert bool(torch.isinf(df["distance"][~df["success"]]).all())
    assert bool(torch.isfinite(df["distance"][df["success"]]).all())
    assert df["success"].any()


# --------------------------------------------------------------------------- uint8 storage


LEVELS = _levels((0.0, 1.0), torch.float32)


def _on_grid(x: torch.Tensor) -> torch.Tensor:
    """The nearest of the 256 levels of [0, 1] (exactly the values uint8 storage decodes to)."""
    return LEVELS[torch.round(x * 255).long()]


UINT8_CASES = [
    (norm, eps_levels, grid)
    for norm in ("linf", "l2", "l1")
    for eps_levels, grid in ((12.0, True), (12.0, False), (0.01, True), (0.6, False))
    # off the grid, an L2/L1 ball below a level holds no grid point (tested below for Linf)
    if grid or eps_levels > 1 or norm == "linf"
]


@pytest.mark.parametrize(("norm", "eps_levels", "grid"), UINT8_CASES)
def test_uint8_in_ball_and_box(tmp_path: Path, norm: str, eps_levels: float, grid: bool) -> None:
    """uint8 examples decode into the box and the eps ball; success/distance are re-scored.

    eps is given in grey levels (1/255): large, much smaller than one level (clean
    inputs on the grid), and just over half a level (Linf, clean inputs off the grid).
    """
    data = Data()
    if grid:
        data.x = _on_grid(data.x)
    d = data.x[0].numel()
    # eps in units of one grey level (1/255), scaled so that the L2/L1 balls are comparable
    scale = {"linf": 1.0, "l2": math.sqrt(d), "l1": float(d)}[norm]
    eps = eps_levels * scale / 255
    attack = advkit.PGD(norm=norm, eps=eps, steps=5)
    model = make_model()
    kw: dict[str, Any] = {"batch_size": BATCH, "shard_size": SHARD, "seed": 5}
    advio.export(model, data, attack, tmp_path / "u8", storage="uint8", **kw)
    advio.export(model, data, attack, tmp_path / "ex", **kw)
    got, exact = advio.load(tmp_path / "u8"), advio.load(tmp_path / "ex")
    v = got["x_adv"]
    assert v.dtype == torch.float32
    assert bool((v >= 0).all() and (v <= 1).all())
    assert bool(torch.isin(v, LEVELS).all())  # one of the 256 levels
    dist = attack.norm.measure(v.double() - data.x.double())
    assert bool((dist <= eps).all()), (dist.max().item(), eps)
    with torch.no_grad():
        pred = model(v).argmax(1)
    assert torch.equal(got["success"], pred != data.y)
    assert torch.equal(got["distance"], dist)
    if grid:  # clean on the grid: every coordinate within one level of the exact example
        assert float((v - exact["x_adv"]).abs().max()) <= 1 / 255 + 1e-6
    if eps_levels < 1 and grid:
        assert torch.equal(v, data.x)  # the only grid point in so small a ball
    # the on-disk tensor is one byte per coordinate
    ds = advio.AdversarialDataset(tmp_path / "u8")
    assert torch.equal(ds[3][0], v[3])
    assert ds.manifest["config"]["storage"] == "uint8"


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_quantize_repairs_rounding_out_of_the_ball(norm: str) -> None:
    """Perturbations on the sphere: plain rounding leaves the ball, the repair does not."""
    g = torch.Generator().manual_seed(0)
    x0 = _on_grid(torch.rand(64, 30, generator=g) * 0.8 + 0.1)
    nrm = advkit.norms.resolve_norm(norm)
    eps = {"linf": 5.6 / 255, "l2": 0.07, "l1": 0.4}[norm]
    delta = nrm.project(torch.randn(64, 30, generator=g) * 10, eps)
    x_adv = (x0 + delta).clamp(0, 1)
    levels = _levels((0.0, 1.0), torch.float32)
    naive = torch.round(x_adv * 255).long()
    assert bool((nrm.measure(levels[naive] - x0).double() > eps).any())  # the problem exists
    q = _quantize(x_adv, x0, nrm, eps, (0.0, 1.0), levels)
    v = levels[q]
    assert bool((nrm.measure(v - x0).double() <= eps).all())
    assert int((q - naive).abs().max()) <= 1
    changed = (q != naive).flatten(1).sum(1)
    # only the samples that left the ball were touched, each as little as needed
    outside = nrm.measure(levels[naive] - x0).double() > eps
    assert bool((changed[~outside] == 0).all())
    assert bool((changed[outside] > 0).all())


def test_quantize_levels_and_other_boxes() -> None:
    for bounds in [(0.0, 1.0), (-1.0, 1.0), (0.0, 255.0), (-0.3, 0.7)]:
        for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
            lv = _levels(bounds, dtype)
            assert lv.dtype == dtype
            assert bounds[0] <= float(lv.double().min()) <= float(lv.double().max()) <= bounds[1]
            assert bool((lv[1:] >= lv[:-1]).all())
    assert torch.equal(_levels((0.0, 255.0), torch.float32), torch.arange(256.0))


def test_uint8_refuses_when_no_grid_point_fits(tmp_path: Path) -> None:
    data = Data()  # clean inputs off the grid
    attack = advkit.PGD(norm="linf", eps=0.1 / 255, steps=2)
    with pytest.raises(advkit.ConfigError, match="storage='exact'"):
        advio.export(make_model(), data, attack, tmp_path, storage="uint8", shard_size=8)


# --------------------------------------------------------------------------- resume


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), str(out), "--delay", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("shard-*.safetensors")):
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "no shard was written in 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    on_disk = sorted(p.name for p in out.glob("shard-*.safetensors"))
    assert 1 <= len(on_disk) < 6, on_disk
    manifest = advio.read_manifest(out, allow_incomplete=True)
    assert not manifest["complete"]
    with pytest.raises(advio.DatasetError, match="has not finished"):
        advio.AdversarialDataset(out)
    (out / ".shard-00005.safetensors.deadbeef.tmp").write_bytes(b"half a shard")  # left by a kill

    resumed = run(out)
    assert resumed.shards_reused == len(on_disk)
    assert resumed.shards_written == 6 - len(on_disk)
    assert not list(out.glob(".*.tmp"))
    fresh = run(tmp_path / "fresh")
    a, b = advio.load(out), advio.load(tmp_path / "fresh")
    assert all(torch.equal(a[k], b[k]) for k in a)  # nothing lost, nothing duplicated
    assert torch.equal(a["index"], torch.arange(N))
    ma, mb = advio.read_manifest(out), advio.read_manifest(tmp_path / "fresh")
    assert ma["shards"] == mb["shards"]  # byte-identical files (same sha256)
    assert resumed.success_count == fresh.success_count

    again = run(out)  # a finished export returns at once
    assert (again.shards_written, again.shards_reused) == (0, 6)


def test_missing_shard_is_recomputed(tmp_path: Path) -> None:
    run(tmp_path)
    before = advio.read_manifest(tmp_path)
    (tmp_path / "shard-00002.safetensors").unlink()
    report = run(tmp_path)
    assert (report.shards_written, report.shards_reused) == (1, 5)
    assert advio.read_manifest(tmp_path)["shards"] == before["shards"]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"eps": 0.3}, "call.eps"),
        ({"seed": 6}, "call.seed"),
        ({"storage": "uint8"}, "storage"),
        ({"targets": None}, "call.targets"),
        ({"targets": advkit.targets.shift(1)}, "call.targets"),
        ({"shard_size": 9}, "shard_size"),
        ({"attack": advkit.PGD(norm="l2", eps=0.6, steps=5, step_size=0.2)}, "settings.steps"),
        ({"attack": advkit.PGD(norm="linf", eps=0.6, steps=4, step_size=0.2)}, "attack.norm"),
        ({"model": "bounds"}, "model.bounds"),
        ({"model": "weights"}, "parameters_sha256"),
        ({"data": 44}, "dataset.length"),
        ({"data": "other"}, "first_sample_sha256"),
    ],
)
def test_mismatched_configuration_is_refused(
    tmp_path: Path, change: dict[str, Any], field: str
) -> None:
    run(tmp_path)
    kw: dict[str, Any] = {
        "batch_size": BATCH,
        "shard_size": SHARD,
        "targets": advkit.targets.random(),
        "seed": 5,
    }
    model, data, attack = make_model(), Data(), make_attack()
    for k, v in change.items():
        if k == "attack":
            attack = v
        elif k == "model" and v == "bounds":
            model = advkit.wrap(model.module, bounds=(0, 2), mean=0.5, std=0.25)
        elif k == "model":
            with torch.no_grad():
                model.module[1].bias.add_(1e-3)
        elif k == "data" and v == "other":
            data.x = data.x.flip(0)
        elif k == "data":
            data = Data(n=v)
        else:
            kw[k] = v
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(advio.ManifestMismatchError, match=field.replace(".", r"\.")):
        advio.export(model, data, attack, tmp_path, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files  # untouched


def test_mismatch_found_in_shards_without_manifest(tmp_path: Path) -> None:
    """A run killed before its manifest (or with it deleted) is still not mixed with another."""
    run(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(advio.ManifestMismatchError, match="different configuration"):
        run(tmp_path, seed=6)
    report = run(tmp_path)  # the same configuration adopts the shards
    assert report.shards_reused == 6


def test_corrupted_manifest_is_refused(tmp_path: Path) -> None:
    run(tmp_path)
    path = tmp_path / "manifest.json"
    good = path.read_text()
    path.write_text(good[: len(good) // 2])
    with pytest.raises(advio.CorruptDatasetError, match="not valid JSON"):
        advio.AdversarialDataset(tmp_path)
    with pytest.raises(advio.CorruptDatasetError, match="not valid JSON"):
        run(tmp_path)
    m = json.loads(good)
    m["config"]["call"]["seed"] = 6  # edited by hand: the fingerprint no longer matches
    path.write_text(json.dumps(m))
    with pytest.raises(advio.CorruptDatasetError, match="config_sha256"):
        advio.load(tmp_path)
    m = json.loads(good)
    m["format_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(advio.CorruptDatasetError, match="upgrade advkit"):
        advio.load(tmp_path)
    m = json.loads(good)
    m["shards"] = m["shards"][:-1]
    path.write_text(json.dumps(m))
    with pytest.raises(advio.CorruptDatasetError, match="shard list"):
        advio.load(tmp_path)
    m = json.loads(good)
    m["shards"][0]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(m))
    with pytest.raises(advio.CorruptDatasetError, match="shard list"):
        advio.AdversarialDataset(tmp_path)
    with pytest.raises(advio.DatasetError, match="no manifest.json"):
        advio.load(tmp_path / "nothing-here")


def test_corrupted_shard_is_refused(tmp_path: Path) -> None:
    run(tmp_path)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit in the payload
    shard.write_bytes(bytes(data))
    with pytest.raises(advio.CorruptDatasetError, match="checksum"):
        advio.load(tmp_path)
    ds = advio.AdversarialDataset(tmp_path)
    ds[0]  # shard 0 is intact
    with pytest.raises(advio.CorruptDatasetError, match="checksum"):
        ds[SHARD]
    assert advio.AdversarialDataset(tmp_path, verify=False)[SHARD][0].shape == (1, 4, 4)
    # a truncated shard on resume (the manifest not yet complete)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["complete"], m["shards"] = False, []
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(advio.CorruptDatasetError, match="delete it"):
        run(tmp_path)
    shard.unlink()  # the fix the message names
    assert run(tmp_path).shards_written == 1


# --------------------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    init = f"tcp://127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(out),
                "--world",
                "2",
                "--init",
                init,
                "--rank",
                str(r),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        for r in range(2)
    ]
    outputs = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=120)
        finally:
            p.kill()
        assert p.returncode == 0, stderr.decode()
        outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
    assert [o["written"] for o in outputs] == [3, 3]  # 6 shards, round robin, no padding
    single = run(tmp_path / "single")
    assert {o["success"] for o in outputs} == {single.success_count}
    a, b = advio.load(out), advio.load(tmp_path / "single")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["index"], torch.arange(N))
    assert advio.read_manifest(out)["shards"] == advio.read_manifest(tmp_path / "single")["shards"]


def test_helpers_reject_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(advkit.ConfigError, match="shard_size"):
        run(tmp_path, shard_size=0)
    with pytest.raises(advkit.ConfigError, match="batch_size"):
        run(tmp_path, batch_size=0)
    with pytest.raises(advkit.ConfigError, match="Attack"):
        advio.export(make_model(), Data(), "pgd", tmp_path)  # type: ignore[arg-type]
    with pytest.raises(advkit.InputError, match="empty"):
        advio.export(make_model(), TensorDataset(torch.zeros(0, 3)), make_attack(), tmp_path)
    with pytest.raises(advkit.ConfigError, match="needs eps"):
        advio.export(nn.Linear(16, 3), Data(), advkit.PGD(steps=1), tmp_path)
    run(tmp_path)
    with pytest.raises(advkit.ConfigError, match="relabel"):
        advio.AdversarialDataset(tmp_path, relabel="prediction")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- labels, RNG


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_labels_of_any_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    """Labels become int64 once, where the batches are read: the export equals an int64 one."""
    data = Data()
    run(tmp_path / "int64", shard_size=45, batch_size=45)
    data.y = data.y.to(dtype)
    kw: dict[str, Any] = {"batch_size": 45, "shard_size": 45, "seed": 5}
    advio.export(make_model(), data, make_attack(), tmp_path / "other", **kw,
                 targets=advkit.targets.random())  # fmt: skip
    a, b = advio.load(tmp_path / "int64"), advio.load(tmp_path / "other")
    assert b["label"].dtype == torch.int64
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 1])
def test_export_leaves_the_global_rng_alone(tmp_path: Path, workers: int) -> None:
    """The DataLoader's worker seeds come from the call's seed, not from the global RNG."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    run(tmp_path / "ds", num_workers=workers, shard_size=45, batch_size=45)
    assert torch.equal(torch.get_rng_state(), before)
    loader = DataLoader(Data(), batch_size=45, num_workers=workers)
    advio.export(make_model(), loader, make_attack(), tmp_path / "dl", shard_size=45, seed=5,
                 targets=advkit.targets.random())  # fmt: skip
    assert torch.equal(torch.get_rng_state(), before)
    a, b = advio.load(tmp_path / "ds"), advio.load(tmp_path / "dl")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progress_without_tqdm_is_an_import_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in evaluate: a missing optional package is an ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    with pytest.raises(ImportError, match=r"advkit\[progress\]"):
        run(tmp_path, progress=True)
    assert run(tmp_path, progress=None).shards_written == 6  # default-like: silently no bar


# --------------------------------------------------------------------------- callables


def _scaled(logits: torch.Tensor, labels: torch.Tensor, targets: Any, k: float) -> torch.Tensor:
    return advkit.objectives.margin(logits, labels, targets) * k


def _clamped(k: float) -> Any:
    def objective(logits: torch.Tensor, labels: torch.Tensor, targets: Any) -> torch.Tensor:
        return advkit.objectives.margin(logits, labels, targets).clamp(max=k)

    return objective


# (first objective, another one, one equal to the first), per kind of unnamed callable
OBJECTIVES = {
    "lambda": (
        lambda: lambda z, y, t: advkit.objectives.margin(z, y, t),
        lambda: lambda z, y, t: advkit.objectives.cross_entropy(z, y, t),
    ),
    "closure": (lambda: _clamped(1.0), lambda: _clamped(2.0)),
    "partial": (
        lambda: functools.partial(_scaled, k=1.0),
        lambda: functools.partial(_scaled, k=2.0),
    ),
}


def _kill_after_five_shards(path: Path) -> None:
    """What a run killed before its last shard leaves: 5 of 6 shards, an open manifest."""
    (path / "shard-00005.safetensors").unlink()
    m = json.loads((path / "manifest.json").read_text())
    m["complete"], m["shards"] = False, []
    del m["summary"]
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_resume_with_another_objective_is_refused(tmp_path: Path, kind: str) -> None:
    """Two lambdas (closures, partials) used to share a fingerprint, so a resumed export
    mixed shards of two objectives; they are now told apart by what they compute."""
    first, other = OBJECTIVES[kind]

    def attack(objective: Any) -> advkit.Attack:
        return advkit.PGD(norm="l2", eps=0.6, steps=2, step_size=0.3, objective=objective)

    kw: dict[str, Any] = {"batch_size": 9, "shard_size": SHARD, "seed": 5}
    advio.export(make_model(), Data(), attack(first()), tmp_path, **kw)
    _kill_after_five_shards(tmp_path)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(advio.ManifestMismatchError, match=r"attack\.objective"):
        advio.export(make_model(), Data(), attack(other()), tmp_path, **kw)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files  # untouched
    # the same computation, built anew (another object, same code and values): resumes
    report = advio.export(make_model(), Data(), attack(first()), tmp_path, **kw)
    assert (report.shards_reused, report.shards_written) == (5, 1)


def test_resume_with_another_target_map_is_refused(tmp_path: Path) -> None:
    def shift(k: int) -> Any:
        return lambda logits, labels, generator: (labels + k) % logits.shape[1]

    run(tmp_path, targets=shift(1))
    _kill_after_five_shards(tmp_path)
    with pytest.raises(advio.ManifestMismatchError, match=r"call\.targets"):
        run(tmp_path, targets=shift(2))
    assert run(tmp_path, targets=shift(1)).shards_reused == 5
    got = advio.load(tmp_path)
    assert torch.equal(got["target"], (got["label"] + 1) % 4)


class _Opaque:
    """An object advkit cannot read: no state it can see, no repr of its own."""

    __slots__ = ()

    def scale(self) -> float:
        return 1.0


def test_unverifiable_objective_resumes_only_when_trusted(tmp_path: Path) -> None:
    opaque = _Opaque()

    def objective(logits: torch.Tensor, labels: torch.Tensor, targets: Any) -> torch.Tensor:
        return advkit.objectives.margin(logits, labels, targets) * opaque.scale()

    attack = advkit.PGD(norm="l2", eps=0.6, steps=2, step_size=0.3, objective=objective)
    kw: dict[str, Any] = {"batch_size": 9, "shard_size": SHARD, "seed": 5}
    advio.export(make_model(), Data(), attack, tmp_path, **kw)  # a fresh export runs
    entry = advio.read_manifest(tmp_path)["config"]["attack"]["objective"]
    assert "_Opaque" in entry["unverified"]
    _kill_after_five_shards(tmp_path)
    with pytest.raises(advio.ManifestMismatchError, match="trust_callables=True"):
        advio.export(make_model(), Data(), attack, tmp_path, **kw)
    report = advio.export(make_model(), Data(), attack, tmp_path, **kw, trust_callables=True)
    assert (report.shards_reused, report.shards_written) == (5, 1)
    with pytest.raises(advio.ManifestMismatchError, match="trust_callables"):
        advio.export(make_model(), Data(), attack, tmp_path, **kw)  # nor a finished one


FINGERPRINT = (
    "import json, sys; sys.path.insert(0, {root!r}); from tests._io_worker import {name}; "
    "from advkit.io._hashing import describe_callable; "
    "print(json.dumps(describe_callable({name}), sort_keys=True))"
)


def test_callable_fingerprints_are_the_same_in_every_process() -> None:
    """No address, no hash-randomized order (a set constant) in a lambda's fingerprint: a
    process with another string-hash seed computes the same one."""
    from ._io_worker import SET_OBJECTIVE

    expected = json.dumps(advio._hashing.describe_callable(SET_OBJECTIVE), sort_keys=True)
    assert "sha256" in expected
    code = FINGERPRINT.format(root=str(ROOT), name="SET_OBJECTIVE")
    env = {**_env(), "PYTHONHASHSEED": "0" if sys.flags.hash_randomization else "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=True
    )
    assert out.stdout.decode().strip() == expected


class _Weighted:
    """A callable object: fingerprinted by its class, its attributes and its __call__."""

    def __init__(self, k: float) -> None:
        self.k = k

    def __call__(self, z: torch.Tensor, y: torch.Tensor, t: Any) -> torch.Tensor:
        return advkit.objectives.margin(z, y, t) * self.k


def test_how_callables_are_described() -> None:
    describe = advio._hashing.describe_callable
    # importable by name: the name, as in manifests written before fingerprints existed
    assert describe(advkit.objectives.margin) == "advkit.objectives.margin"
    assert describe(advkit.targets.shift(2)) == "advkit.targets.Shift(k=2)"
    assert describe(_scaled) == "tests.test_io._scaled"
    # read by content: equal when they compute the same, different otherwise
    assert describe(_Weighted(1.0)) == describe(_Weighted(1.0)) != describe(_Weighted(2.0))
    assert describe(_Weighted(1.0).__call__) != describe(_Weighted(2.0).__call__)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net, other = nn.Linear(2, 2), nn.Linear(2, 2)
    assert describe(net) != describe(other)  # a model by its weights, not its repr
    weights = torch.arange(3.0)
    by_tensor = [describe(lambda z, y, t, w=w: z @ w) for w in (weights, weights + 1)]
    assert by_tensor[0] != by_tensor[1]  # a default argument, by content
    assert describe(lambda z, y, t: weights) == describe(lambda z, y, t: weights)
    gen = torch.Generator()  # no state advkit can read, no repr of its own
    assert "unverified" in describe(lambda z, y, t: gen)
