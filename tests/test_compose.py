"""Attacks made of attacks: Ensemble (worst case, each member on what is still robust),
MultiTargeted (APGD-T), Sweep; pass counts, nesting, which part broke each sample."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advkit
from advkit.attacks.registry import REGISTRY, by_cli_name

from ._digits import digits_data, digits_model


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_data()
    return digits_model(), x[:160], y[:160]


def members(eps: float) -> list[advkit.Attack]:
    return [
        advkit.FGSM(eps=eps),
        advkit.PGD(eps=eps, steps=5),
        advkit.APGD(eps=eps, steps=10, objective=advkit.objectives.dlr),
    ]


def test_worst_case_is_below_every_member_and_pass_counts_add_up(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = digits
    g = torch.Generator().manual_seed(0)
    res = advkit.Ensemble(members(0.1))(model, x, y, generator=g)
    alone = [a(model, x, y, generator=torch.Generator().manual_seed(0)) for a in members(0.1)]
    for a in alone:
        assert res.robust_accuracy() <= a.robust_accuracy()
    assert res.robust_accuracy() < min(a.robust_accuracy() for a in alone)  # here: strictly
    # the clean pass, then each member's own passes
    assert res.forward_passes == 1 + sum(p.result.forward_passes for p in res.parts)
    assert res.backward_passes == sum(p.result.backward_passes for p in res.parts)
    # each member ran only on what the members before it left robust
    with torch.no_grad():
        clean_ok = model(x).argmax(1) != y
    broken = clean_ok.clone()
    for p in res.parts:
        assert torch.equal(p.rows, (~broken).nonzero().squeeze(1))
        broken[p.rows] |= p.result.success
    assert torch.equal(broken, res.success)
    # broken_by: the member whose point came back; -1 where none (or the clean input)
    assert res.broken_by is not None
    for m, p in enumerate(res.parts):
        hit = p.rows[p.result.success]
        assert bool((res.broken_by[hit] == m).all())
        assert torch.equal(res.x_adv[hit], p.result.x_adv[p.result.success])
    assert bool((res.broken_by[~res.success | clean_ok] == -1).all())


def test_independent_members_and_the_same_worst_case(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = digits
    ids = torch.arange(x.shape[0])
    kw = {"generator": torch.Generator().manual_seed(1), "sample_ids": ids}
    shared = advkit.Ensemble(members(0.1), shared_seed=True)(model, x, y, **kw)
    every = advkit.Ensemble(members(0.1), shared_seed=True, independent=True)(
        model, x, y, generator=torch.Generator().manual_seed(1), sample_ids=ids
    )
    assert torch.equal(shared.success, every.success)
    assert all(p.rows.numel() == every.parts[0].rows.numel() for p in every.parts)
    # with shared seeds a member's result is what a direct call gives
    direct = members(0.1)[1](
        model, x, y, generator=torch.Generator().manual_seed(1), sample_ids=ids
    )
    part = every.parts[1]
    assert torch.equal(part.result.success, direct.success[part.rows])


def test_ensembles_nest(digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits
    a, b, c = members(0.1)
    flat = advkit.Ensemble([a, b, c], shared_seed=True)
    nested = advkit.Ensemble(
        {"inner": advkit.Ensemble([a, b], shared_seed=True), "APGD": c}, shared_seed=True
    )
    kw = {"sample_ids": torch.arange(x.shape[0])}
    r1 = flat(model, x, y, generator=torch.Generator().manual_seed(2), **kw)
    r2 = nested(model, x, y, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(r1.success, r2.success)
    assert r2.forward_passes == 1 + sum(p.result.forward_passes for p in r2.parts)
    inner = r2.parts[0].result
    assert [p.name for p in inner.parts] == ["FGSM", "PGD"]
    # the inner ensemble reuses the clean logits the outer one computed: no pass of its own
    assert inner.forward_passes == sum(p.result.forward_passes for p in inner.parts)
    assert set(r2.broken_by.tolist()) <= {-1, 0, 1}  # type: ignore[union-attr]


def test_budget_and_mixed_members(digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits
    # The members' common eps is the ensemble's; a call's eps overrides it.
    e = advkit.Ensemble([advkit.FGSM(eps=0.05), advkit.PGD(eps=0.05, steps=3)])
    assert e.eps == 0.05 and not e.minimal
    assert bool((e(model, x, y).distance <= 0.05).all())
    assert bool((e(model, x, y, eps=0.02).distance <= 0.02).all())
    with pytest.raises(advkit.ConfigError, match="eps is required"):
        advkit.Ensemble([advkit.FGSM(), advkit.PGD(steps=2)])(model, x, y)
    # A minimal-norm member in a fixed-eps ensemble runs budgeted.
    mixed = advkit.Ensemble([advkit.FGSM(eps=0.1), advkit.DeepFool(norm="linf", steps=5)])
    res = mixed(model, x, y)
    assert bool((res.distance <= 0.1).all())
    # Minimal-norm members only: a minimal-norm ensemble, the smallest distance per sample.
    mn = advkit.Ensemble(
        [advkit.DeepFool(norm="l2", steps=10), advkit.CW(steps=20, search_steps=2)]
    )
    assert mn.minimal
    both = mn(model, x, y, generator=torch.Generator().manual_seed(0))
    df = advkit.DeepFool(norm="l2", steps=10)(model, x, y)
    assert bool((both.distance <= df.distance + 1e-9).all())
    assert both.robust_accuracy([0.5, 1.0]) <= df.robust_accuracy([0.5, 1.0])


def test_multitargeted_is_apgd_t(digits: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = digits
    apgd_t = advkit.MultiTargeted(
        advkit.APGD(eps=0.1, steps=10, objective=advkit.objectives.dlr), num_targets=3
    )
    res = apgd_t(model, x, y, generator=torch.Generator().manual_seed(0))
    assert not res.targeted  # success is any misclassification
    assert [p.name for p in res.parts] == ["target 1", "target 2", "target 3"][: len(res.parts)]
    with torch.no_grad():
        clean = model(x)
    ranked = clean.scatter(1, y[:, None], -math.inf).topk(3, dim=1).indices
    for j, p in enumerate(res.parts):
        assert p.result.targets is None  # each part is judged by the untargeted rule
        # the part's own objective pulled towards the j-th most likely wrong class: where it
        # succeeded, that class is usually the prediction
        hits = p.rows[p.result.success]
        pred = p.result.logits[p.result.success].argmax(1)
        assert float((pred == ranked[hits, j]).double().mean()) > 0.5 if hits.numel() else True
    dlr = advkit.APGD(eps=0.1, steps=10, objective=advkit.objectives.dlr)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert res.robust_accuracy() <= dlr.robust_accuracy()
    with pytest.raises(advkit.ConfigError, match="chooses its own targets"):
        apgd_t(model, x, y, targets=advkit.targets.shift(1))
    # the default number of targets follows the number of classes
    res9 = advkit.MultiTargeted(advkit.APGD(eps=1e-6, steps=2))(model, x[:4], y[:4])
    assert len(res9.parts) == 9


def test_multitargeted_skip_runs_the_rest_of_a_run_with_its_draws(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """``skip=2`` runs targets 3 and 4 only; with ``sample_ids`` target 3 finds on each
    sample the point it finds in the full run."""
    model, x, y = digits
    apgd = advkit.APGD(eps=0.1, steps=6, objective=advkit.objectives.dlr)
    ids = torch.arange(len(y))

    def run(skip: int) -> advkit.AttackResult:
        attack = advkit.MultiTargeted(apgd, num_targets=4, skip=skip)
        return attack(model, x, y, generator=torch.Generator().manual_seed(0), sample_ids=ids)

    full, rest = run(0), run(2)
    assert [p.name for p in rest.parts] == ["target 3", "target 4"]
    full3, rest3 = full.parts[2], rest.parts[0]
    assert full3.name == "target 3" and 0 < full3.rows.numel() < rest3.rows.numel()
    where = torch.searchsorted(rest3.rows, full3.rows)  # rows are sorted
    assert torch.equal(rest3.rows[where], full3.rows)
    assert torch.equal(rest3.result.x_adv[where], full3.result.x_adv)
    assert "skip=2" in repr(advkit.MultiTargeted(apgd, 4, skip=2))
    with pytest.raises(advkit.ConfigError, match="skip"):
        advkit.MultiTargeted(apgd, 4, skip=-1)
    # A plain generator: the skipped targets' draws are taken and discarded, so on the rows
    # target 3 runs on in the full run, target 3 finds the same points.
    plain = advkit.MultiTargeted(apgd, num_targets=3)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    rows = plain.parts[2].rows
    later = advkit.MultiTargeted(apgd, num_targets=3, skip=2)(
        model, x[rows], y[rows], generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(later.parts[0].result.x_adv, plain.parts[2].result.x_adv)


def test_sweep_reads_as_a_minimal_norm_attack(
    digits: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = digits
    grid = [0.02, 0.05, 0.1]
    pgd = advkit.PGD(steps=5)
    ids = torch.arange(x.shape[0])
    res = advkit.Sweep(pgd, grid, shared_seed=True)(
        model, x, y, generator=torch.Generator().manual_seed(0), sample_ids=ids
    )
    assert [p.eps for p in res.parts] == grid
    curve = res.robust_accuracy(grid)
    assert curve == sorted(curve, reverse=True)
    # each budget ran on what the smaller ones left; its successes lie within it
    done = torch.isfinite(res.distance) & (res.distance == 0)
    for p in res.parts:
        assert p.eps is not None
        assert bool((p.result.distance[p.result.success] <= p.eps).all())
        assert not bool(done[p.rows].any())
        done[p.rows] |= p.result.success
    # a budget's run is a direct call's (shared seeds)
    direct = pgd(model, x, y, eps=0.1, generator=torch.Generator().manual_seed(0), sample_ids=ids)
    last = res.parts[-1]
    assert torch.equal(last.result.success, direct.success[last.rows])


def test_registry_feeds_exports_and_cli() -> None:
    names = [e.name for e in REGISTRY]
    assert len(names) == len(set(names))
    for e in REGISTRY:
        assert getattr(advkit, e.name) is e.cls
        assert getattr(advkit.attacks, e.name) is e.cls
        assert e.name in advkit.__all__ and e.name in advkit.attacks.__all__
        assert set(e.norms) <= {"linf", "l2", "l1"} and e.summary
    exported = {
        n
        for n in advkit.__all__
        if isinstance(getattr(advkit, n), type)
        and issubclass(getattr(advkit, n), advkit.Attack)
        and n not in ("Attack", "MinNormAttack")
    }
    assert exported == set(names)
    cli = by_cli_name()
    assert {e.cli for e in REGISTRY if e.cli} <= set(cli)
    assert {"apgd", "apgd-ce", "apgd-dlr", "apgd-t"} <= set(cli)
    from advkit.cli import parse_attack

    _, attack = parse_attack("apgd-t:steps=5,num_targets=3", "l2")
    assert isinstance(attack, advkit.MultiTargeted) and attack.num_targets == 3
    assert isinstance(attack.attack, advkit.APGD) and attack.attack.steps == 5


def test_contract_table_covers_the_registry() -> None:
    from .attack_db import ATTACKS

    covered = {info.cls for info in ATTACKS if info.cls is not None}
    missing = [e.name for e in REGISTRY if e.cls not in covered]
    assert not missing, f"attacks of the registry missing from tests/attack_db.py: {missing}"


def test_sweep_needs_a_list_with_a_positive_budget() -> None:
    pgd = advkit.PGD(steps=2)
    for eps, match in (([], "above 0"), ([0.0], "above 0"), (0.1, "list of budgets")):
        with pytest.raises(advkit.ConfigError, match=match):
            advkit.Sweep(pgd, eps=eps)  # type: ignore[arg-type]
