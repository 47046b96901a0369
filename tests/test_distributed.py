"""advkit.distributed and evaluate under torch.distributed: shards without padding, two gloo
ranks on the loopback give the same per-sample results as one process, bit for bit."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, Dataset, TensorDataset

import advkit
from advkit.distributed import (
    ShardSampler,
    all_gather_rows,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    is_main,
    rank_world,
    shard_range,
)
from advkit.evaluation import evaluate

from ._digits import digits_data, digits_model

EPS = [0.05, 0.1]
N_ODD = 151  # not divisible by the world size


@pytest.mark.parametrize("n", [0, 1, 2, 7, 151, 1000])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_the_dataset_once(n: int, world: int) -> None:
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert flat == list(range(n))  # disjoint, in order, nothing repeated or padded
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == list(map(len, shards))
    assert ShardSampler(list(range(n)), 0, world).world == world


def test_single_process_helpers() -> None:
    assert rank_world() == (0, 1) and is_main()
    t = torch.arange(6.0).reshape(3, 2)
    assert all_gather_rows(t) is t
    assert torch.equal(all_reduce_sum(t.clone()), t) and torch.equal(all_reduce_max(t.clone()), t)
    barrier()
    assert shard_range(5) == range(5)
    with pytest.raises(ValueError, match="rank"):
        shard_range(5, 2, 2)


class _Recording(Dataset):  # type: ignore[type-arg]
    """A dataset that writes down every index it serves, to check the split."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.seen: list[int] = []

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.append(int(i))
        return self.x[i], self.y[i]


def _attacks() -> dict[str, advkit.Attack]:
    return {
        "FGSM": advkit.FGSM(norm="linf"),
        "PGD": advkit.PGD(norm="linf", steps=4, random_init=True),
    }


class _Scaled(torch.nn.Module):
    """Logits times 100: a saturated softmax the diagnostics flag."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 100


MASKED_DIAGNOSED = 100  # more than rank 0's shard of N_ODD: both ranks diagnose some


def _diagnostics(d: dict[str, Any]) -> dict[str, Any]:
    """The diagnostics of a report, less their cost (the batch shapes differ between a
    process that diagnoses 100 samples and two that diagnose 75 and 25: so does padding)."""
    out = dict(d["diagnostics"])
    out["evidence"] = {
        k: v for k, v in out["evidence"].items() if k not in ("forward_rows", "backward_rows")
    }
    return {k: v for k, v in out.items() if not k.endswith("_passes_per_sample")}


def _loopback() -> None:
    names = {name for _, name in socket.if_nameindex()}
    for lo in ("lo", "lo0"):
        if lo in names:
            os.environ["GLOO_SOCKET_IFNAME"] = lo
            return


def _worker(rank: int, world: int, store: str, out: str, model: Any, x: Any, y: Any) -> None:
    torch.set_num_threads(1)
    _loopback()
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=world)
    try:
        data = _Recording(x, y)
        report = evaluate(model, data, _attacks(), eps=EPS, batch_size=16, seed=7, progress=False)
        seen = list(data.seen)
        tiny = _Recording(x[:1], y[:1])  # one sample: rank 0's shard is empty
        tiny_report = evaluate(model, tiny, _attacks(), eps=EPS, batch_size=16, seed=7)
        loader = DataLoader(data, batch_size=10, sampler=ShardSampler(data))
        via_loader = evaluate(model, loader, _attacks(), eps=EPS, seed=7, progress=False)
        masked = evaluate(
            _Scaled(model),
            data,
            _attacks(),
            eps=EPS,
            batch_size=16,
            seed=7,
            diagnostic_samples=MASKED_DIAGNOSED,
        )
        result = {
            "masked": masked.to_dict(records=False),
            "seen": seen,
            "tiny_seen": tiny.seen,
            "report": report.to_dict(),
            "tiny": tiny_report.to_dict(),
            "loader": via_loader.to_dict(),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
        with pytest.raises(advkit.ConfigError, match="reads the whole dataset on every rank"):
            evaluate(model, DataLoader(data, batch_size=8), _attacks(), eps=EPS, progress=False)
        Path(out, f"rank{rank}.ok").write_text("")
    finally:
        dist.destroy_process_group()


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    """What must agree between runs: all but the wall time, the process count and the number
    of batched forward passes (which grows with the number of batches)."""
    out = {k: v for k, v in d.items() if k not in ("seconds", "world_size", "attacks")}
    out["attacks"] = [{k: v for k, v in a.items() if k != "forward_passes"} for a in d["attacks"]]
    return out


def test_two_gloo_ranks_match_one_process_bit_for_bit(tmp_path: Path) -> None:
    _, _, x_all, y_all = digits_data()
    model = digits_model()
    x, y = x_all[:N_ODD].clone(), y_all[:N_ODD].clone()
    world = 2
    mp.spawn(
        _worker,
        args=(world, f"file://{tmp_path / 'store'}", str(tmp_path), model, x, y),
        nprocs=world,
        join=True,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert all((tmp_path / f"rank{r}.ok").exists() for r in range(world))

    # the split: disjoint contiguous shards, every index once, nothing padded
    assert ranks[0]["seen"] + ranks[1]["seen"] == list(range(N_ODD))
    assert len(ranks[0]["seen"]) == N_ODD // 2
    assert ranks[0]["tiny_seen"] == [] and ranks[1]["tiny_seen"] == [0]

    # one process, same threads: the per-sample records are identical, bit for bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = evaluate(model, TensorDataset(x, y), _attacks(), eps=EPS, batch_size=16, seed=7)
        tiny = evaluate(model, TensorDataset(x[:1], y[:1]), _attacks(), eps=EPS, seed=7)
    finally:
        torch.set_num_threads(threads)
    expected = _strip(single.to_dict())
    assert expected["robust_accuracy"][0] < expected["clean_accuracy"]  # PGD broke something
    pgd = [r["attacks"]["PGD"]["success"] for r in expected["records"]]
    assert any(True in s for s in pgd) and any(False in s for s in pgd)
    for r in range(world):  # every rank returns the same full report
        assert ranks[r]["report"]["world_size"] == world
        assert ranks[r]["report"]["records"] == expected["records"]
        assert _strip(ranks[r]["report"]) == expected
        assert _strip(ranks[r]["loader"]) == expected
        assert _strip(ranks[r]["tiny"]) == _strip(tiny.to_dict())
        assert [rec["index"] for rec in ranks[r]["report"]["records"]] == list(range(N_ODD))

    # Diagnostics: the samples to diagnose are split over the ranks (75 + 25), their counts
    # summed: every rank reports the same flags, and the same as one process.
    torch.set_num_threads(1)
    try:
        with pytest.warns(advkit.DiagnosticWarning, match="zero_gradients"):
            masked = evaluate(
                _Scaled(model),
                TensorDataset(x, y),
                _attacks(),
                eps=EPS,
                batch_size=16,
                seed=7,
                diagnostic_samples=MASKED_DIAGNOSED,
            ).to_dict(records=False)
    finally:
        torch.set_num_threads(threads)
    names = [f["name"] for f in masked["diagnostics"]["flags"]]
    assert "zero_gradients" in names and masked["diagnostics"]["samples"] == MASKED_DIAGNOSED
    assert ranks[0]["masked"]["diagnostics"] == ranks[1]["masked"]["diagnostics"]
    for r in range(world):
        assert _diagnostics(ranks[r]["masked"]) == _diagnostics(masked)
        assert _diagnostics(ranks[r]["report"]) == _diagnostics(single.to_dict())


def _fake_nccl_group(monkeypatch: pytest.MonkeyPatch, backend: str = "nccl") -> None:
    """Two ranks on `backend`, GPU 0 current (no set_device), without a GPU or a group."""
    import advkit.distributed as ad
    import advkit.evaluation as ev

    monkeypatch.setattr(ad, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(ev, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(
    ("compute", "expected"),
    [("cuda:1", "cuda:1"), ("cuda:0", "cuda:0"), ("cuda", "cuda:0"), ("cpu", "cuda:0")],
)
def test_one_nccl_device_rule_for_evaluate_and_all_gather_rows(
    monkeypatch: pytest.MonkeyPatch, compute: str, expected: str
) -> None:
    """Under NCCL, evaluate's collectives and all_gather_rows must use the same GPU: the
    rank's compute device (here cuda:1 while GPU 0 is current), else the current one."""
    import advkit.distributed as ad
    from advkit.evaluation import _comm

    _fake_nccl_group(monkeypatch)
    dev = torch.device(compute)
    assert ad.collective_device(dev) == torch.device(expected)
    assert _comm(dev) == ad.collective_device(dev)  # evaluate follows the one rule

    # all_gather_rows asks the same rule about the device of the tensor it gathers
    asked: list[torch.device] = []
    monkeypatch.setattr(ad, "collective_device", lambda d=None: asked.append(d) or "cpu")

    def fake_all_gather(out: list[torch.Tensor], t: torch.Tensor) -> None:
        for o in out:
            o.copy_(t)

    monkeypatch.setattr(dist, "all_gather", fake_all_gather)
    rows = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(ad.all_gather_rows(rows), torch.cat([rows, rows]))
    assert asked == [rows.device]


def test_gloo_collectives_stay_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import advkit.distributed as ad
    from advkit.evaluation import _comm

    _fake_nccl_group(monkeypatch, backend="gloo")
    for d in ("cuda:1", "cpu"):
        assert ad.collective_device(d) == _comm(torch.device(d)) == torch.device("cpu")
