"""advkit.evaluate: clean / robust accuracy over a dataset, worst case over attacks, records."""

from __future__ import annotations

import io
import json
import math
import sys
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import advkit
from advkit.evaluation import RobustnessReport, evaluate

from ._digits import digits_data, digits_model

EPS = [0.0, 0.05, 0.1, 0.15]
N = 150


@pytest.fixture(scope="module")
def digits() -> tuple[torch.nn.Module, TensorDataset]:
    _, _, x, y = digits_data()
    return digits_model(), TensorDataset(x[:N], y[:N])


def attacks() -> dict[str, advkit.Attack]:
    return {
        "FGSM": advkit.FGSM(norm="linf"),
        "PGD": advkit.PGD(norm="linf", steps=5, random_init=True),
        "DeepFool": advkit.DeepFool(norm="linf"),
    }


@pytest.fixture(scope="module")
def ensemble(digits: tuple[torch.nn.Module, TensorDataset]) -> RobustnessReport:
    model, data = digits
    return evaluate(model, data, attacks(), eps=EPS, batch_size=64, seed=3, progress=False)


@pytest.fixture(scope="module")
def independent(digits: tuple[torch.nn.Module, TensorDataset]) -> RobustnessReport:
    model, data = digits
    return evaluate(
        model, data, attacks(), eps=EPS, batch_size=64, seed=3, independent=True, progress=False
    )


def test_worst_case_is_below_every_attack(
    ensemble: RobustnessReport, independent: RobustnessReport
) -> None:
    worst = ensemble.robust_accuracy()
    assert 0 < worst[-1] < worst[1] < ensemble.clean_accuracy  # the attacks do something
    assert worst[0] == ensemble.clean_accuracy  # nothing fits in a ball of radius 0
    assert worst == sorted(worst, reverse=True)
    for name in ["FGSM", "PGD", "DeepFool"]:
        alone = independent.robust_accuracy(name)
        assert all(w <= a for w, a in zip(worst, alone, strict=True)), name
    # no single attack is the worst case everywhere here, so the ensemble is strictly stronger
    best_single = [
        min(v)
        for v in zip(
            *(independent.robust_accuracy(a) for a in ["FGSM", "PGD", "DeepFool"]), strict=True
        )
    ]
    assert any(w < b for w, b in zip(worst, best_single, strict=True))
    # Running each attack only on survivors changes nothing per sample: the same samples are
    # robust as when every attack runs on everything (per-sample keyed randomness).
    assert torch.equal(ensemble.robust(), independent.robust())
    # ... at a lower cost: the later attacks ran on fewer samples
    assert sum(ensemble.attacked("PGD")) < 0.8 * sum(independent.attacked("PGD"))
    assert ensemble.attacked("DeepFool")[0] < independent.attacked("DeepFool")[0]
    assert ensemble.attacked("FGSM") == independent.attacked("FGSM")


def test_attacks_run_only_on_still_robust_samples(ensemble: RobustnessReport) -> None:
    robust_after_fgsm = ensemble.robust(after="FGSM")
    pgd = ensemble.distances["PGD"]
    ran = ~pgd.isnan()
    # PGD at each eps ran exactly on what FGSM left robust, minus what PGD broke at smaller eps
    pgd_earlier = torch.zeros_like(ran)
    pgd_earlier[:, 1:] = ensemble.broken("PGD")[:, :-1]
    expected = robust_after_fgsm & ~pgd_earlier
    expected[:, 0] &= False  # eps = 0: nothing is run
    assert torch.equal(ran[:, 1:], expected[:, 1:])
    # DeepFool ran once, on the samples still robust at the smallest positive eps
    df = ensemble.distances["DeepFool"]
    assert torch.equal(~df.isnan(), ensemble.robust(after="PGD")[:, 1])
    assert ensemble.attacked("DeepFool")[0] < ensemble.attacked("FGSM")[1]
    with pytest.raises(advkit.ConfigError, match="independent=True"):
        ensemble.robust_accuracy("PGD")


def test_records_agree_with_totals(ensemble: RobustnessReport) -> None:
    recs = ensemble.records()
    n = ensemble.n
    assert n == N and [r["index"] for r in recs] == list(range(N))
    assert sum(r["correct"] for r in recs) / n == ensemble.clean_accuracy
    for k in range(len(EPS)):
        assert sum(r["robust"][k] for r in recs) / n == ensemble.robust_accuracy()[k]
    _, _, _, y = digits_data()
    assert [r["label"] for r in recs] == y[:N].tolist()
    for r in recs:
        fixed_hits = [
            [s is True for s in r["attacks"][a]["success"]] for a in ["FGSM", "PGD", "DeepFool"]
        ]
        # robust at eps <=> correct and no attack succeeded at that eps or a smaller one
        for k in range(len(EPS)):
            hit = any(any(h[: k + 1]) for h in fixed_hits[:2]) or fixed_hits[2][k]
            assert r["robust"][k] == (r["correct"] and not hit)
        found = [d for a in ["FGSM", "PGD"] for d in r["attacks"][a]["distance"] if d is not None]
        if r["attacks"]["DeepFool"]["distance"] is not None:
            found.append(r["attacks"]["DeepFool"]["distance"])
        if r["correct"]:
            assert r["distance"] == (min(found) if found else None)
        for a in ["FGSM", "PGD"]:  # distances are given exactly where the attack succeeded
            att = r["attacks"][a]
            for e, s, d in zip(EPS, att["success"], att["distance"], strict=True):
                assert (s is True) == (d is not None)
                if d is not None:
                    assert d <= e + 1e-6


def test_misclassified_samples_are_never_robust_nor_attacked(ensemble: RobustnessReport) -> None:
    wrong = ~ensemble.correct
    assert 0 < int(wrong.sum()) < N  # the digits model misclassifies a few
    assert not bool(ensemble.robust()[wrong].any())
    for name, d in ensemble.distances.items():
        assert bool(d[wrong].isnan().all()), name
    assert bool((ensemble.distance()[wrong] == 0).all())
    for r in ensemble.records():
        if not r["correct"]:
            assert r["robust"] == [False] * len(EPS)
            assert all(s is None for s in r["attacks"]["PGD"]["success"])


def test_first_attack_matches_direct_calls(
    digits: tuple[torch.nn.Module, TensorDataset], ensemble: RobustnessReport
) -> None:
    model, data = digits
    x, y = data.tensors
    correct = model(x).argmax(1) == y
    broken = torch.zeros(N, dtype=torch.bool)
    expected = []
    for e in EPS:
        if e > 0:
            res = advkit.FGSM(norm="linf")(model, x, y, eps=e)
            broken |= res.success & correct
        expected.append(int((correct & ~broken).sum()) / N)
    assert ensemble.robust_accuracy("FGSM") == expected


def test_per_sample_seeds_match_direct_calls(
    digits: tuple[torch.nn.Module, TensorDataset], independent: RobustnessReport
) -> None:
    """Evaluate calls each attack with generator seed and sample_ids = dataset indices."""
    model, data = digits
    x, y = data.tensors
    correct = model(x).argmax(1) == y
    pgd = advkit.PGD(norm="linf", steps=5, random_init=True)
    own = torch.zeros(N, dtype=torch.bool)
    for k, e in enumerate(EPS[1:], start=1):
        res = pgd(model, x, y, eps=e, generator=torch.Generator().manual_seed(3),
                  sample_ids=torch.arange(N))  # fmt: skip
        ran = correct & ~own
        d = independent.distances["PGD"][:, k]
        assert torch.equal(~d.isnan(), ran)
        assert torch.equal(torch.isfinite(d[ran]), res.success[ran])
        hit = ran & res.success
        assert torch.equal(d[hit], res.distance[hit].double())
        own |= hit


def test_minimal_norm_distances_match_the_attack_alone(
    digits: tuple[torch.nn.Module, TensorDataset],
) -> None:
    model, data = digits
    x, y = data.tensors
    eps = [0.25, 0.5, 1.0, 1.5]
    attack = advkit.DeepFool(norm="l2")
    report = evaluate(model, data, attack, eps=eps, batch_size=32, progress=False)
    alone = attack(model, x, y)
    correct = report.correct
    d = report.distances["DeepFool"]
    assert torch.equal(~d.isnan(), correct)  # ran once on every correctly classified sample
    torch.testing.assert_close(d[correct], alone.distance[correct].double(), rtol=1e-5, atol=0)
    assert report.robust_accuracy() == alone.robust_accuracy(eps)
    assert report.robust_accuracy("DeepFool") == report.robust_accuracy()
    assert report.attacked("DeepFool") == [int(correct.sum())] * len(eps)


def test_results_do_not_depend_on_batching_or_loader(
    digits: tuple[torch.nn.Module, TensorDataset], ensemble: RobustnessReport
) -> None:
    model, data = digits
    gradient_attacks = {k: v for k, v in attacks().items() if k != "DeepFool"}
    small = evaluate(model, data, gradient_attacks, eps=EPS, batch_size=23, seed=3, progress=False)
    loader = DataLoader(data, batch_size=40)
    via_loader = evaluate(model, loader, gradient_attacks, eps=EPS, seed=3, progress=False)
    for other in (small, via_loader):
        assert torch.equal(other.robust(), ensemble.robust(after="PGD"))
        for name in ["FGSM", "PGD"]:
            assert torch.equal(
                other.distances[name].nan_to_num(-1), ensemble.distances[name].nan_to_num(-1)
            )


def test_seed_and_sample_ids_reach_the_attack() -> None:
    """Random noise succeeds on a seed-dependent subset: evaluate must match direct calls
    with generator seed ``seed`` and ``sample_ids`` = dataset indices, whatever the batching."""
    torch.manual_seed(0)
    net = torch.nn.Linear(20, 3)
    x = torch.rand(100, 20)
    y = net(x).argmax(1)
    data = TensorDataset(x, y)
    noise = advkit.UniformNoise(norm="linf")
    found = []
    for seed in (0, 1):
        report = evaluate(net, data, noise, eps=[0.5], batch_size=7, seed=seed, progress=False)
        direct = noise(net, x, y, eps=0.5, generator=torch.Generator().manual_seed(seed),
                       sample_ids=torch.arange(100))  # fmt: skip
        broken = report.broken("UniformNoise")[:, 0]
        assert 10 < int(broken.sum()) < 90
        assert torch.equal(broken, direct.success)
        found.append(broken)
    assert not torch.equal(found[0], found[1])


def test_model_state_is_restored(digits: tuple[torch.nn.Module, TensorDataset]) -> None:
    model, data = digits
    model.train()
    try:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        report = evaluate(model, data, advkit.FGSM(), eps=0.1, progress=False)
        assert model.training
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    finally:
        model.eval()
    assert torch.equal(report.predictions, model(data.tensors[0]).argmax(1))  # eval-mode BN


def test_report_table_json_and_plot(ensemble: RobustnessReport, tmp_path: Any) -> None:
    text = str(ensemble)
    assert f"Robustness of {N} samples" in text
    for row in ["FGSM", "+ PGD", "+ DeepFool", "worst case", "eps=0.05"]:
        assert row in text
    worst = f"{100 * ensemble.robust_accuracy()[-1]:.2f}%"
    (last_row,) = [line for line in text.splitlines() if line.startswith("  worst case")]
    assert last_row.endswith(worst)
    assert text.splitlines()[-1].startswith("diagnostics (64 samples")  # then the diagnostics

    path = tmp_path / "report.json"
    ensemble.to_json(path)
    loaded = json.loads(path.read_text())  # strict JSON: no NaN / Infinity
    assert loaded["robust_accuracy"] == ensemble.robust_accuracy()
    assert loaded["clean_accuracy"] == ensemble.clean_accuracy
    assert [a["name"] for a in loaded["attacks"]] == ["FGSM", "PGD", "DeepFool"]
    assert loaded["attacks"][0]["robust_accuracy_alone"] == ensemble.robust_accuracy("FGSM")
    assert loaded["attacks"][1]["robust_accuracy_alone"] is None
    assert loaded["attacks"][2]["robust_accuracy_after"] == ensemble.robust_accuracy()
    assert loaded["records"] == ensemble.records()
    assert "records" not in ensemble.to_dict(records=False)

    import matplotlib

    matplotlib.use("Agg")
    ax = ensemble.plot(title="digits")
    assert len(ax.get_lines()) == 4
    assert list(ax.get_lines()[-1].get_ydata()) == ensemble.robust_accuracy()
    ax.figure.savefig(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar(
    digits: tuple[torch.nn.Module, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = digits
    data = TensorDataset(*(t[:50] for t in data.tensors))
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    evaluate(model, data, advkit.FGSM(), eps=[0.05, 0.1], batch_size=50)
    out = tty.getvalue()
    assert "50/50" in out and "img/s" in out and "robust 0.05:" in out
    pipe = io.StringIO()  # not a terminal: no bar
    monkeypatch.setattr(sys, "stderr", pipe)
    evaluate(model, data, advkit.FGSM(), eps=0.1, progress=True)
    assert pipe.getvalue() == ""
    monkeypatch.setattr(sys, "stderr", tty)
    before = len(tty.getvalue())
    evaluate(model, data, advkit.FGSM(), eps=0.1, progress=False)
    assert len(tty.getvalue()) == before


def test_progress_without_tqdm(
    digits: tuple[torch.nn.Module, TensorDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, data = digits
    data = TensorDataset(*(t[:50] for t in data.tensors))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    with pytest.raises(ImportError, match=r"advkit\[progress\]"):
        evaluate(model, data, advkit.FGSM(), eps=0.1, progress=True)
    report = evaluate(model, data, advkit.FGSM(), eps=0.1)  # default: silently no bar
    assert report.n == 50


class _Stream(IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield torch.rand(4), 0


class _Triples(Dataset):  # type: ignore[type-arg]
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return {"x": torch.rand(4), "y": 0}


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        ("shuffled", {}, advkit.ConfigError, "shuffle=False"),
        ("tensor", {}, advkit.InputError, "TensorDataset"),
        ("stream", {}, advkit.InputError, "map-style"),
        ("dicts", {}, advkit.InputError, r"pair \(inputs, labels\)"),
        ("empty", {}, advkit.InputError, "empty"),
        ("ok", {"attacks": []}, advkit.ConfigError, "at least one attack"),
        ("ok", {"attacks": [advkit.FGSM(norm="l2"), advkit.PGD()]}, advkit.ConfigError, "norms"),
        ("ok", {"attacks": [advkit.DeepFool(eps=0.1)]}, advkit.ConfigError, "without eps"),
        ("ok", {"attacks": [42]}, advkit.ConfigError, "not an advkit Attack"),
        ("ok", {"attacks": ["pgdd"]}, advkit.ConfigError, "unknown attack 'pgdd'"),
        ("ok", {"eps": []}, advkit.ConfigError, "eps is empty"),
        ("ok", {"eps": [0.1, -1.0]}, advkit.ConfigError, ">= 0"),
        ("ok", {"batch_size": 0}, advkit.ConfigError, "batch_size"),
    ],
)
def test_bad_input(data: str, kwargs: dict[str, Any], error: type, match: str) -> None:
    net = torch.nn.Linear(4, 3)
    ds = TensorDataset(torch.rand(10, 4), torch.randint(0, 3, (10,)))
    given: Any = {
        "shuffled": DataLoader(ds, batch_size=4, shuffle=True),
        "tensor": torch.rand(10, 4),
        "stream": _Stream(),
        "dicts": _Triples(),
        "empty": TensorDataset(torch.rand(0, 4), torch.zeros(0).long()),
        "ok": ds,
    }[data]
    args: dict[str, Any] = {"attacks": advkit.FGSM(), "eps": [0.1], **kwargs}
    with pytest.raises(error, match=match):
        evaluate(net, given, args.pop("attacks"), progress=False, **args)


def test_unknown_attack_name_in_report(ensemble: RobustnessReport) -> None:
    with pytest.raises(advkit.ConfigError, match="no attack named 'CW'"):
        ensemble.robust_accuracy("CW")
    with pytest.raises(advkit.ConfigError, match="not both"):
        ensemble.robust_accuracy("FGSM", after="PGD")
    assert math.isclose(
        ensemble.robust_accuracy(after="DeepFool")[-1], ensemble.robust_accuracy()[-1]
    )


def test_duplicate_attacks_are_numbered() -> None:
    net = torch.nn.Linear(4, 3)
    ds = TensorDataset(torch.rand(10, 4), torch.randint(0, 3, (10,)))
    report = evaluate(net, ds, [advkit.PGD(steps=2), advkit.PGD(steps=3)], eps=0.1, progress=False)
    assert [a.name for a in report.attacks] == ["PGD", "PGD#2"]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_integer_labels_of_any_dtype(
    digits: tuple[torch.nn.Module, TensorDataset], dtype: torch.dtype
) -> None:
    """Labels become int64 once, where the batches are read: the report equals an int64 one."""
    model, data = digits
    x, y = (t[:40] for t in data.tensors)
    pgd = advkit.PGD(norm="linf", steps=2)
    kw: dict[str, Any] = {"eps": [0.05, 0.1], "batch_size": 20, "progress": False}
    expected = evaluate(model, TensorDataset(x, y), pgd, **kw)
    report = evaluate(model, TensorDataset(x, y.to(dtype)), pgd, **kw)
    assert report.labels.dtype == torch.int64
    assert report.to_dict(records=True)["records"] == expected.to_dict(records=True)["records"]


@pytest.mark.parametrize("workers", [0, 1])
def test_evaluate_leaves_the_global_rng_alone(
    digits: tuple[torch.nn.Module, TensorDataset], workers: int
) -> None:
    """The DataLoader's worker seeds come from the call's seed, not from the global RNG."""
    model, data = digits
    data = TensorDataset(*(t[:40] for t in data.tensors))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    kw: dict[str, Any] = {"eps": [0.1], "progress": False, "num_workers": workers}
    evaluate(model, data, advkit.PGD(steps=2, random_init=True), batch_size=20, **kw)
    assert torch.equal(torch.get_rng_state(), before)
    loader = DataLoader(data, batch_size=20, num_workers=workers)
    evaluate(model, loader, advkit.PGD(steps=2, random_init=True), **kw)
    assert torch.equal(torch.get_rng_state(), before)
