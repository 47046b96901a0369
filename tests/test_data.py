"""advkit._data: the one data path of evaluate and io.export, with one error type per mistake."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, TensorDataset

import advkit
from advkit import _data
from advkit import io as advio


class _Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield torch.rand(4), 0


class _Dicts(Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return {"x": torch.rand(4), "y": 0}


def _data_set(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


MISTAKES: list[tuple[str, Any, dict[str, Any], type, str]] = [
    ("a tensor", lambda: torch.rand(8, 4), {}, advkit.InputError, "TensorDataset"),
    ("an iterable dataset", _Stream, {}, advkit.InputError, "map-style"),
    ("a loader over one", lambda: DataLoader(_Stream()), {}, advkit.InputError, "map-style"),
    ("items not pairs", _Dicts, {}, advkit.InputError, r"pair \(inputs, labels\)"),
    ("an empty dataset", lambda: _data_set(0), {}, advkit.InputError, "empty"),
    (
        "a shuffling loader",
        lambda: DataLoader(_data_set(), batch_size=4, shuffle=True),
        {},
        advkit.ConfigError,
        "shuffle=False",
    ),
    (
        "a custom batch sampler",
        lambda: DataLoader(
            _data_set(), batch_sampler=BatchSampler(range(8), batch_size=4, drop_last=False)
        ),
        {},
        advkit.ConfigError,
        "default batch sampler",
    ),
    ("batch_size 0", _data_set, {"batch_size": 0}, advkit.ConfigError, "batch_size"),
    ("num_workers -1", _data_set, {"num_workers": -1}, advkit.ConfigError, "num_workers"),
]


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [m[1:] for m in MISTAKES],
    ids=[m[0] for m in MISTAKES],
)
def test_one_error_type_per_mistake_in_evaluate_and_export(
    tmp_path: Path, make: Any, kwargs: dict[str, Any], error: type, match: str
) -> None:
    net = nn.Linear(4, 3)
    with pytest.raises(error, match=match) as in_evaluate:
        advkit.evaluate(net, make(), advkit.FGSM(), eps=0.1, progress=False, **kwargs)
    with pytest.raises(error, match=match) as in_export:
        advio.export(net, make(), advkit.FGSM(eps=0.1), tmp_path, **kwargs)
    assert type(in_evaluate.value) is type(in_export.value) is error
    assert not (tmp_path / "manifest.json").exists()


def test_missing_tqdm_is_an_import_error_in_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    net, data = nn.Linear(4, 3), _data_set()
    with pytest.raises(ImportError, match=r"advkit\[progress\]"):
        advkit.evaluate(net, data, advkit.FGSM(), eps=0.1, progress=True)
    with pytest.raises(ImportError, match=r"advkit\[progress\]"):
        advio.export(net, data, advkit.FGSM(eps=0.1), tmp_path, progress=True)
    with pytest.raises(ImportError, match=r"advkit\[progress\]"):
        _data.Progress(True, total=1, desc="x")
    assert _data.Progress(None, total=1, desc="x").bar is None  # None: silently no bar


def test_batches_carry_dataset_indices_and_int64_labels() -> None:
    x = torch.rand(10, 3)
    y = torch.arange(10, dtype=torch.uint8) % 3
    source = _data.resolve(
        TensorDataset(x, y), batch_size=4, num_workers=0, caller="test", shard=False
    )
    assert source.plan() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    got = list(_data.load_batches(source, [[7, 8], [2]], device=torch.device("cpu"), seed=0))
    assert [ids.tolist() for ids, _, _ in got] == [[7, 8], [2]]
    assert all(lab.dtype == torch.int64 for _, _, lab in got)
    assert torch.equal(got[0][1], x[7:9]) and torch.equal(got[0][2], y[7:9].long())
    # a loader's settings: its batch size, unless the call gives one (evaluate keeps the loader's)
    loader = DataLoader(TensorDataset(x, y), batch_size=3, drop_last=True)
    kw: dict[str, Any] = {"num_workers": None, "caller": "test", "shard": False}
    assert _data.resolve(loader, batch_size=None, **kw).plan() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert _data.resolve(loader, batch_size=5, **kw).batch_size == 5
    assert _data.resolve(loader, batch_size=5, keep_loader_settings=True, **kw).batch_size == 3


def test_collate_that_drops_samples_is_an_input_error() -> None:
    def first_only(items: list[Any]) -> Any:
        return torch.stack([items[0][0]]), torch.stack([items[0][1]])

    loader = DataLoader(_data_set(), batch_size=4, collate_fn=first_only)
    with pytest.raises(advkit.InputError, match="collate function returned 1 inputs"):
        advkit.evaluate(nn.Linear(4, 3), loader, advkit.FGSM(), eps=0.1, progress=False)


def test_model_device() -> None:
    assert _data.model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert _data.model_device(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert _data.model_device(nn.ReLU()) == torch.device("cpu")
    bn = nn.BatchNorm1d(2, affine=False).to("meta")  # buffers only
    assert _data.model_device(bn) == torch.device("meta")
