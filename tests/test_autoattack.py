"""AutoAttack: each version's members and settings (the reference's), the worst case over
its members, few-class models, a randomized model under ``rand``, and the ways to run it."""

from __future__ import annotations

import warnings
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

import advkit
from advkit import objectives
from advkit.attacks import autoattack
from advkit.attacks.autoattack import VERSIONS

from ._digits import digits_data, digits_model
from ._models import exact_norm_at_most


def settings_of(attack: advkit.Attack) -> dict[str, Any]:
    """What a member is: its class, the inner attack's class and key settings."""
    inner = attack.attack if isinstance(attack, advkit.MultiTargeted) else attack
    out: dict[str, Any] = {"cls": type(inner).__name__, "norm": str(attack.norm)}
    if isinstance(attack, advkit.MultiTargeted):
        out["targets"], out["skip"] = attack.num_targets, attack.skip
    keys = ("steps", "restarts", "skip_restarts", "queries", "p_init", "rescale", "positions")
    keys += ("eot",)
    keys += ("large_eps", "early_stop", "smoothing", "smoothing_draws")
    for key in keys:
        if hasattr(inner, key):
            out[key] = getattr(inner, key)
    if hasattr(inner, "objective") and not isinstance(inner, (advkit.FAB, advkit.Square)):
        out["objective"] = inner.objective.__name__
    return out


# The reference code's settings (fra31/auto-attack, AutoAttack.set_version), member by member.
APGD_CE = {"cls": "APGD", "steps": 100, "restarts": 1, "eot": 1, "objective": "cross_entropy"}
APGD_CE["smoothing"] = 0.0
APGD_T = {"cls": "APGD", "targets": 9, "steps": 100, "restarts": 1, "objective": "dlr"}
APGD_T["smoothing"] = 0.0
FAB_T = {"cls": "FAB", "targets": None, "steps": 100, "restarts": 1}  # None: min(9, C - 1)
# The reference runs its 5000 queries on the schedule of a 10,000-query run, and never puts a
# window flush with the last row or column.
SQUARE = {"cls": "Square", "queries": 5000, "p_init": 0.8, "restarts": 1}
SQUARE.update(rescale=False, positions="reference")
# advkit's fast, the same in Linf and L2.
FAST_LINF_L2: dict[str, dict[str, Any]] = {
    "apgd-ce": APGD_CE,
    "apgd-t": {**APGD_T, "targets": 5},
    "apgd-smooth": {**APGD_CE, "steps": 40, "smoothing": 0.2, "smoothing_draws": 2},
    "probe-fab-t": {**FAB_T, "targets": 1, "steps": 50},
    "probe-square": {**SQUARE, "queries": 250},
    "apgd-t-rest": {**APGD_T, "targets": None, "skip": 5},
    "fab-t": FAB_T,
    "square": SQUARE,
}
EXPECTED: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("standard", "linf"): {
        "apgd-ce": APGD_CE,
        "apgd-t": {**APGD_T, "targets": None},
        "fab-t": FAB_T,
        "square": SQUARE,
    },
    ("standard", "l1"): {
        "apgd-ce": {**APGD_CE, "restarts": 5, "large_eps": True},
        "apgd-t": {**APGD_T, "targets": 5, "large_eps": True},
        "fab-t": FAB_T,
        "square": SQUARE,
    },
    ("plus", "l2"): {
        "apgd-ce": {**APGD_CE, "restarts": 5},
        "apgd-dlr": {**APGD_CE, "restarts": 5, "objective": "dlr"},
        "fab": {"cls": "FAB", "steps": 100, "restarts": 5},
        "square": SQUARE,
        "apgd-t": {**APGD_T, "targets": None},
        "fab-t": FAB_T,
    },
    ("rand", "linf"): {
        "apgd-ce": {**APGD_CE, "eot": 20},
        "apgd-dlr": {**APGD_CE, "eot": 20, "objective": "dlr"},
    },
    ("fast", "linf"): FAST_LINF_L2,
    ("fast", "l2"): FAST_LINF_L2,
    ("fast", "l1"): {
        "apgd-ce": {**APGD_CE, "steps": 50, "large_eps": True},
        "apgd-smooth": {
            **APGD_CE,
            "steps": 40,
            "smoothing": 0.2,
            "smoothing_draws": 2,
            "large_eps": True,
        },
        "apgd-t-ce": {
            **APGD_T,
            "targets": 5,
            "steps": 20,
            "objective": "cross_entropy",
            "large_eps": True,
        },
        "apgd-ce-restarts": {
            **APGD_CE,
            "steps": 30,
            "restarts": 7,
            "skip_restarts": 1,
            "large_eps": True,
        },
        "apgd-t-short": {**APGD_T, "targets": 5, "steps": 30, "large_eps": True},
        "fab-t2": {**FAB_T, "targets": 2},
        "probe-square": {**SQUARE, "queries": 250},
        "apgd-ce-full": {**APGD_CE, "restarts": 5, "large_eps": True},
        "apgd-t-dlr": {**APGD_T, "targets": 5, "large_eps": True},
        "fab-t": FAB_T,
        "square": SQUARE,
    },
}


@pytest.mark.parametrize(("version", "norm"), list(EXPECTED))
def test_each_version_has_the_reference_members_and_settings(version: str, norm: str) -> None:
    aa = advkit.AutoAttack(norm, eps=0.3, version=version)  # type: ignore[arg-type]
    assert list(aa.names) == list(EXPECTED[version, norm])
    for name, member in aa.members:
        got = settings_of(member)
        for key, want in EXPECTED[version, norm][name].items():
            assert got[key] == want, (version, norm, name, key, got)
        assert member.eps == 0.3 and str(member.norm) == norm
        if isinstance(member, advkit.APGD) or isinstance(
            getattr(member, "attack", None), advkit.APGD
        ):
            assert got["early_stop"] is True
    assert aa.eps == 0.3 and not aa.minimal


def test_settings_pass_through_and_are_checked() -> None:
    aa = advkit.AutoAttack(
        "l2", version="plus", steps=7, queries=11, num_targets=4, precision="bf16"
    )
    for _, member in aa.members:
        inner = getattr(member, "attack", member)
        assert getattr(inner, "steps", 7) == 7 and getattr(inner, "queries", 11) == 11
        assert inner.precision == "bf16"
        if isinstance(member, advkit.MultiTargeted):
            assert member.num_targets == 4
    assert "precision='bf16'" in repr(aa) and "version='plus'" in repr(aa)
    with pytest.raises(advkit.ConfigError, match="version must be one of"):
        advkit.AutoAttack("linf", 0.1, version="fastest")  # type: ignore[arg-type]
    with pytest.raises(advkit.ConfigError, match="steps"):
        advkit.AutoAttack("linf", 0.1, steps=0)
    with pytest.raises(advkit.ConfigError, match="num_targets"):
        advkit.AutoAttack("linf", 0.1, num_targets=0)
    assert set(VERSIONS) == {"standard", "plus", "rand", "fast"}


class Quantized(nn.Module):
    """``base`` on inputs rounded to multiples of 1/4: zero input gradients almost
    everywhere (gradient masking), while scores still move."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(torch.round(t * 4) / 4)
        return out


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_data()
    return digits_model(), x[:48], y[:48]


@pytest.mark.parametrize("version", ["standard", "fast"])
def test_the_worst_case_is_at_most_each_member(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor], version: str
) -> None:
    """With ``sample_ids`` every member breaks inside the ensemble whatever it breaks alone
    with the same generator: the ensemble's robust set lies inside each member's."""
    model, x, y = digits
    aa = advkit.AutoAttack("linf", eps=0.08, version=version, steps=8, queries=40, num_targets=3)
    ids = torch.arange(100, 100 + len(y))

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    res = aa(model, x, y, generator=gen(), sample_ids=ids)
    assert exact_norm_at_most(res.x_adv, x, "linf", 0.08).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    ran = {p.name for p in res.parts}
    for name, member in aa.members:
        if name in aa.gated and name not in ran:
            continue  # fast's escalation: runs only after a probe broke a sample
        alone = member(model, x, y, generator=gen(), sample_ids=ids)
        assert not (alone.success & ~res.success).any(), name
    broken_by = {p.name for p in res.parts}
    assert "apgd-ce" in broken_by
    assert res.success.float().mean() > 0.2  # the budget is meaningful
    clean_wrong = model(x).argmax(1) != y
    assert (res.broken_by[clean_wrong] == -1).all()


def test_fast_escalates_where_a_probe_breaks_what_apgd_left(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """On an honest model the probes break nothing and ``fast`` stops there, silent; on a
    model whose input gradients are zero (quantized inputs) the short Square breaks what
    APGD cannot, so ``fast`` runs standard's FAB-T and Square in full and says so."""
    base, x, y = digits
    aa = advkit.AutoAttack("linf", 0.1, version="fast", steps=8, queries=1000, num_targets=3)
    ids = torch.arange(len(y))

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", advkit.DiagnosticWarning)
        honest = aa(base, x, y, generator=gen(), sample_ids=ids)
    assert [p.name for p in honest.parts] == [
        "apgd-ce",
        "apgd-t",
        "apgd-smooth",
        "probe-fab-t",
        "probe-square",
    ]
    assert aa.gated == {"apgd-t-rest", "fab-t", "square"}
    l1 = advkit.AutoAttack("l1", 1.0, version="fast")  # L1: the rest of standard's APGD too
    assert l1.gated == {"apgd-ce-full", "apgd-t-dlr", "fab-t", "square"}
    assert l1.near == {"apgd-t-short", "fab-t2"} and not aa.near

    masked = Quantized(base)
    with pytest.warns(
        advkit.DiagnosticWarning, match="probes .* broke samples that its gradient"
    ) as rec:
        res = aa(masked, x, y, generator=gen(), sample_ids=ids)
    assert rec[0].filename == __file__  # it points at the caller's line
    parts = {p.name: p.result for p in res.parts}
    assert list(parts) == list(aa.names)
    assert parts["probe-square"].success.any() and not parts["apgd-ce"].success.any()
    assert exact_norm_at_most(res.x_adv, x, "linf", 0.1).all()
    square = dict(aa.members)["square"]
    alone = square(masked, x, y, generator=gen(), sample_ids=ids)
    assert not (alone.success & ~res.success).any()
    assert res.success.sum() > parts["probe-square"].success.sum()
    # the escalation costs about standard's FAB-T and Square
    assert res.forward_passes > honest.forward_passes
    # L1: its one probe is Square's start, its escalation FAB-T and Square
    l1 = advkit.AutoAttack("l1", 2.0, version="fast", steps=4, queries=400, num_targets=3)
    with pytest.warns(advkit.DiagnosticWarning, match=r"probes \(a short Square run\)"):
        res = l1(masked, x, y, generator=gen(), sample_ids=ids)
    assert [p.name for p in res.parts][-2:] == ["fab-t", "square"]


@pytest.mark.parametrize("classes", [2, 3, 4])
def test_models_with_two_to_four_classes(classes: int) -> None:
    """The targets follow the classes (min(k, C - 1)) and the margin stands in for the
    targeted DLR loss below 4 classes: every version runs, inside the ball, and breaks
    what an exact attack breaks on a linear model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, classes))
    x = torch.rand(32, 1, 3, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    for version in VERSIONS:
        aa = advkit.AutoAttack("l2", eps=0.6, version=version, steps=10, queries=30)
        res = aa(model, x, y, generator=torch.Generator().manual_seed(0))
        assert exact_norm_at_most(res.x_adv, x, "l2", 0.6).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        exact = advkit.DeepFool(norm="l2", steps=10)(model, x, y)
        reachable = exact.distance < 0.6 * 0.99
        assert res.success[reachable].all(), version
    uses_margin = [
        getattr(m, "attack", m).objective
        for _, m in aa._for_few_classes().members
        if hasattr(getattr(m, "attack", m), "objective")
    ]
    assert objectives.dlr not in uses_margin


def test_a_randomized_model_under_rand(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """``rand`` averages every step's gradient over 20 draws (counted as 20 passes) and
    breaks more of a noisy model than the same members without EOT."""
    base, x, y = digits

    class Noisy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = base

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            noise = torch.randn(t.shape, generator=self.gen, device=t.device)
            return self.base(t + 0.25 * noise)

        gen = torch.Generator().manual_seed(3)

    noisy = Noisy()
    rand = advkit.AutoAttack("linf", eps=0.1, version="rand", steps=6)
    res = rand(noisy, x, y, generator=torch.Generator().manual_seed(0))
    plain = advkit.Ensemble(
        [
            advkit.APGD("linf", 0.1, steps=6),
            advkit.APGD("linf", 0.1, steps=6, objective=objectives.dlr),
        ]
    )
    ref = plain(noisy, x, y, generator=torch.Generator().manual_seed(0))
    # the gradient passes: 20 per step of every sample still running
    assert res.backward_passes >= 20 * 6 and res.backward_passes % 20 == 0

    def broken(x_adv: torch.Tensor) -> torch.Tensor:
        """Misclassified in a majority of 25 draws (one draw flatters either attack)."""
        with torch.no_grad():
            votes = sum((noisy(x_adv).argmax(1) != y).int() for _ in range(25))
        return votes > 12

    assert broken(res.x_adv).sum() > broken(ref.x_adv).sum()


def test_untargeted_only(digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits
    aa = advkit.AutoAttack("linf", 0.1, version="fast", steps=2)
    with pytest.raises(advkit.ConfigError, match="AutoAttack is untargeted"):
        aa(model, x, y, targets=(y + 1) % 10)


def test_command_line_and_evaluate(digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    from advkit.cli import parse_attack

    _, attack = parse_attack("autoattack:version=fast,steps=5,num_targets=2", "l2")
    assert isinstance(attack, advkit.AutoAttack)
    assert (attack.version, attack.steps, str(attack.norm)) == ("fast", 5, "l2")
    with pytest.raises(advkit.ConfigError, match="version must be one of"):
        parse_attack("autoattack:version=quick", "linf")
    _, bf16 = parse_attack("autoattack:version=fast,precision=bf16", "linf")
    assert isinstance(bf16, advkit.AutoAttack) and bf16.member_precision == "bf16"
    model, x, y = digits
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=24)
    report = advkit.evaluate(
        model, data, {"AA": advkit.AutoAttack("linf", version="fast", steps=5)}, eps=[0.05, 0.1]
    )
    curve = report.robust_accuracy("AA")
    assert curve[0] >= curve[1]
    direct = advkit.AutoAttack("linf", 0.1, version="fast", steps=5)(model, x, y)
    assert abs(curve[1] - (1 - direct.success.float().mean().item())) <= 0.1


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.8), ("l1", 2.0)])
def test_an_escalated_fast_breaks_every_sample_standard_breaks(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    """The escalation completes ``standard`` with its own draws: with ``sample_ids`` an
    escalated ``fast`` breaks every sample ``standard`` breaks (L1 included, whose ``fast``
    replaces standard's APGD members by shorter tries)."""
    model, x, y = digits
    kw: dict[str, Any] = {"steps": 6, "queries": 60, "num_targets": 3}
    fast = advkit.AutoAttack(norm, eps, version="fast", **kw)
    fast.escalate = True
    standard = advkit.AutoAttack(norm, eps, **kw)
    ids = torch.arange(len(y))
    with pytest.warns(advkit.DiagnosticWarning, match="ran the rest of standard"):
        f = fast(model, x, y, generator=torch.Generator().manual_seed(0), sample_ids=ids)
    s = standard(model, x, y, generator=torch.Generator().manual_seed(0), sample_ids=ids)
    assert 0 < s.success.float().mean() < 1  # the budget is meaningful
    assert not (s.success & ~f.success).any()
    assert fast.gated & {p.name for p in f.parts}  # the escalation ran


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_l1_splits_standards_members_with_their_draws(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor], seed: int
) -> None:
    """Alone, with one generator and ``sample_ids``, L1 ``fast``'s escalated members break
    exactly what ``standard``'s members break (``apgd-ce-full`` what its APGD-CE breaks,
    ``apgd-t-dlr`` what its APGD-T breaks, ``fab-t`` and ``square`` what its FAB-T and its
    Square break), and ``fab-t2`` only what FAB-T's first 2 targets break: the escalation
    completes ``standard`` draw for draw."""
    model, x, y = digits
    ids = torch.arange(len(y))
    kw: dict[str, Any] = {"steps": 6, "queries": 60, "num_targets": 3}
    fast = dict(advkit.AutoAttack("l1", 2.0, version="fast", **kw).members)
    standard = dict(advkit.AutoAttack("l1", 2.0, **kw).members)

    def broke(attack: advkit.Attack) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return attack(model, x, y, generator=gen, sample_ids=ids).success

    apgd_ce = broke(standard["apgd-ce"])
    assert torch.equal(apgd_ce, broke(fast["apgd-ce-full"]))
    assert (apgd_ce & ~broke(fast["apgd-ce"])).any()  # fast's first APGD-CE is shorter
    assert torch.equal(broke(standard["apgd-t"]), broke(fast["apgd-t-dlr"]))
    fab_t = broke(standard["fab-t"])
    assert torch.equal(fab_t, broke(fast["fab-t"]))
    assert not (broke(fast["fab-t2"]) & ~fab_t).any()  # FAB-T's first 2 targets
    assert torch.equal(broke(standard["square"]), broke(fast["square"]))


def test_fast_l1_runs_its_near_members_on_the_samples_near_the_boundary(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``apgd-t-short`` and ``fab-t2`` attack only the samples whose best margin so far is
    within ``NEAR`` of their clean margin, a test that does not depend on the logits' scale:
    none at ``NEAR = 0``, every sample left at ``NEAR = 1``, some between; the members after
    them run in every case."""
    model, x, y = digits
    aa = advkit.AutoAttack("l1", 2.0, version="fast", steps=6, queries=60, num_targets=3)
    clean = torch.tensor([[3.0, 0.0, -1.0], [3.0, 0.0, -1.0], [3.0, 1.0, 0.0]])
    best = torch.tensor([[0.4, 0.0, -1.0], [0.7, 0.0, -1.0], [1.2, 1.0, 0.0]])
    task = SimpleNamespace(labels=torch.tensor([0, 0, 0]))
    assert autoattack.NEAR == 0.2
    want = torch.tensor([True, False, True])  # margin ratios 0.4 / 3, 0.7 / 3, 0.2 / 2
    for scale in (1.0, 100.0):
        got = aa._eligible("fab-t2", task, clean * scale, best * scale)  # type: ignore[arg-type]
        assert got is not None and torch.equal(got, want)
    assert aa._eligible("apgd-ce-restarts", task, clean, best) is None  # type: ignore[arg-type]

    default = autoattack.NEAR

    def rows(near: float) -> dict[str, int]:
        """How many samples each member ran on, at ``NEAR = near``."""
        monkeypatch.setattr(autoattack, "NEAR", near)
        gen = torch.Generator().manual_seed(0)
        res = aa(model, x, y, generator=gen, sample_ids=torch.arange(len(y)))
        parts = {p.name: p for p in res.parts}
        out = {name: len(p.rows) for name, p in parts.items()}
        restarts = parts["apgd-ce-restarts"].result.success
        out["left"] = int((~restarts).sum())  # robust after the members before the near ones
        return out

    everywhere = rows(1.0)
    assert everywhere["apgd-t-short"] == everywhere["left"] > 0
    nowhere = rows(0.0)
    assert "apgd-t-short" not in nowhere and "fab-t2" not in nowhere
    assert "probe-square" in nowhere  # the members after them still run
    some = rows(default)
    assert 0 < some["apgd-t-short"] < some["left"]

    # The test is per sample: with sample_ids, the batch does not change what is near.
    ids = torch.arange(len(y))
    whole = aa(model, x, y, generator=torch.Generator().manual_seed(0), sample_ids=ids)
    for part in (slice(0, 20), slice(20, None)):
        res = aa(
            model,
            x[part],
            y[part],
            generator=torch.Generator().manual_seed(0),
            sample_ids=ids[part],
        )
        assert torch.equal(res.success, whole.success[part])
        assert torch.equal(res.x_adv, whole.x_adv[part])
        near = {p.name: ids[part][p.rows] for p in res.parts}["fab-t2"]
        full = {p.name: ids[p.rows] for p in whole.parts}["fab-t2"]
        assert torch.equal(near, full[(full >= ids[part][0]) & (full <= ids[part][-1])])


def test_evaluate_decides_fast_escalation_for_the_whole_dataset(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """On a gradient-masked model the probes break samples in some batches only: evaluate
    runs the escalation on every batch (or on none), so its result is one call's over the
    whole dataset with sample_ids, whatever the batch size."""
    base, x, y = digits
    masked = Quantized(base)
    aa = advkit.AutoAttack("linf", 0.1, version="fast", steps=8, queries=400, num_targets=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", advkit.DiagnosticWarning)
        direct = aa(
            masked, x, y, generator=torch.Generator().manual_seed(0), sample_ids=torch.arange(48)
        )
        assert "square" in [p.name for p in direct.parts]  # this call escalated
        data = torch.utils.data.TensorDataset(x, y)
        for batch in (8, 48):
            report = advkit.evaluate(
                masked, data, {"AA": aa}, eps=0.1, batch_size=batch, diagnostics=False
            )
            robust = report.robust()[:, 0]  # rows in dataset order
            assert torch.equal(robust, ~direct.success), batch
    assert aa.escalate is None  # evaluate leaves the attack as it found it


def test_evaluate_takes_attacks_by_their_command_line_names(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = digits
    data = torch.utils.data.TensorDataset(x[:16], y[:16])
    report = advkit.evaluate(
        model, data, "autoattack:version=fast,steps=3,queries=20", eps=0.1, norm="l2",
        diagnostics=False,
    )  # fmt: skip
    assert [a.name for a in report.attacks] == ["autoattack:version=fast,steps=3,queries=20"]
    assert "AutoAttack(norm='l2'" in report.attacks[0].description
    mixed = advkit.evaluate(
        model, data, ["fgsm", advkit.PGD(steps=2), "fgsm"], eps=0.1, diagnostics=False
    )
    assert [a.name for a in mixed.attacks] == ["fgsm", "PGD", "fgsm#2"]
    with pytest.raises(advkit.ConfigError, match="unknown attack 'autoatack'"):
        advkit.evaluate(model, data, "autoatack", eps=0.1)


def test_the_square_probe_gets_at_least_100_queries() -> None:
    # queries // 20, but never under 100 (a 10-query probe missed a quantized model) nor
    # above the queries asked for.
    for queries, probe in ((5000, 250), (1000, 100), (200, 100), (50, 50)):
        aa = advkit.AutoAttack("linf", 0.1, version="fast", queries=queries)
        assert dict(aa.members)["probe-square"].queries == probe, queries
