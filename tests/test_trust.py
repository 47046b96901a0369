"""Evaluations you can trust: advkit.diagnose raises each flag on a small model that has the
problem and none on honest models; BPDA and EOT restore the attacks; the verdict over draws."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

import advkit
from advkit.diagnostics import CHECKS, EVIDENCE_KEYS, _RandomSearch, judge
from advkit.result import is_success

from ._digits import digits_model
from ._trust import (
    Detached,
    Noisy,
    Quantized,
    Scaled,
    Softmax,
    digits_batch,
    honest_models,
    linear_model,
    pocket_data,
)

EPS = 0.1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_batch(64)


# ---------------------------------------------------------------------- no false alarm


@pytest.mark.parametrize("name", ["standard", "adversarial", "linear"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", EPS), ("l2", 0.5)])
def test_no_flag_on_honest_models(
    name: str, norm: str, eps: float, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    d = advkit.diagnose(honest_models()[name], *batch, norm=norm, eps=eps)
    assert d.names == [] and d.ok, str(d)
    assert d.checks == CHECKS and not d.skipped  # every check ran...
    ev = d.evidence
    assert ev["correct"] >= 55 and ev["fd_trials"] >= 100  # ... on the batch
    assert 0 < ev["robust_eps"] < ev["correct"] and ev["robust_unbounded"] == 0
    assert 0 < d.forward_passes <= 142 and 0 < d.backward_passes <= 33  # the stated budget
    assert "no flag" in str(d)


# ---------------------------------------------------------------------- each flag


def _trap(name: str) -> nn.Module:
    std = digits_model()
    return {
        "saturated": lambda: Scaled(std),
        "quantized": lambda: Quantized(std),
        "noisy": lambda: Noisy(std),
        "softmax": lambda: Softmax(std),
        "detached branch": lambda: Detached(std, linear_model()),
    }[name]()


@pytest.mark.parametrize(
    ("trap", "flags", "advice"),
    [
        (
            "saturated",
            {"zero_gradients", "unbounded_not_broken", "gradient_free_stronger"},
            "advkit.APGD(objective=advkit.objectives.dlr)",
        ),
        ("quantized", {"zero_gradients", "non_differentiable"}, "advkit.BPDA(fn)"),
        ("noisy", {"randomized"}, "advkit.APGD(eot=20)"),
        ("softmax", {"probability_outputs"}, "output=torch.log"),
        ("detached branch", {"non_differentiable"}, "remove the detach"),
    ],
)
def test_each_trap_raises_its_flag(
    trap: str, flags: set[str], advice: str, batch: tuple[torch.Tensor, torch.Tensor]
) -> None:
    d = advkit.diagnose(_trap(trap), *batch, eps=EPS)
    assert flags <= set(d.names), str(d)
    first = d.flag(sorted(flags, key=CHECKS.index)[0])
    assert first is not None and advice in first.message
    for f in d.flags:
        assert f.evidence and all(math.isfinite(v) for v in f.evidence.values())
        assert f"! {f.name}: " in str(d)
    assert d.names == sorted(d.names, key=CHECKS.index)
    if trap == "noisy":  # finite differences of a random function mean nothing, and
        assert d.names == ["randomized"] and "non_differentiable" in d.skipped
        assert "gradient_free_stronger" in d.skipped  # one draw's success can be luck
    if trap == "saturated":  # the loss saturates, the logits still have a gradient
        (flag,) = [f for f in d.flags if f.name == "zero_gradients"]
        assert flag.evidence["fraction"] > 0.9 and flag.evidence["saturated"] > 50
        assert "softmax saturates" in flag.message
    if trap == "quantized":  # no gradient at all
        (flag,) = [f for f in d.flags if f.name == "zero_gradients"]
        assert flag.evidence["saturated"] == 0 and "rounding" in flag.message
    assert d.forward_passes <= 142 and d.backward_passes <= 33


def test_a_model_without_autograd_path_is_named(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = digits_model()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.net(x)

    d = advkit.diagnose(NoGrad(), *batch, eps=EPS, checks=["zero_gradients"])
    flag = d.flag("zero_gradients")
    assert d.names == ["zero_gradients"] and flag is not None
    assert "does not depend on its input through autograd" in flag.message
    assert d.checks == ("zero_gradients",)


def test_not_monotonic_on_a_model_broken_only_near_the_data() -> None:
    model, x, y = pocket_data()
    d = advkit.diagnose(model, x, y, eps=0.1)
    assert {"not_monotonic", "unbounded_not_broken"} <= set(d.names), str(d)
    ev = d.evidence
    assert ev["robust_eps"] == 0 and ev["robust_unbounded"] >= 30
    flag = d.flag("not_monotonic")
    assert flag is not None and flag.evidence["not_monotonic"] >= 30


def test_the_objective_under_test_is_the_attacks(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """DLR and the margin do not saturate: an evaluation that uses them sees through the
    scaled logits, and the diagnosis says nothing."""
    model = _trap("saturated")
    for objective in (advkit.objectives.dlr, advkit.objectives.margin):
        d = advkit.diagnose(model, *batch, eps=EPS, objective=objective)
        assert d.names == [], str(d)
        assert d.objective == objective.__name__


def test_your_own_robust_samples_are_what_the_score_attack_tests(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    model = digits_model()
    x, y = batch
    fgsm = advkit.FGSM(eps=EPS)(model, x, y)  # a weak evaluation leaves too much robust
    d = advkit.diagnose(
        model, x, y, eps=EPS, robust=~fgsm.success, checks=["gradient_free_stronger"]
    )
    correct = model(x).argmax(1) == y
    assert d.evidence["gradient_robust"] == int((~fgsm.success & correct).sum())
    with pytest.raises(advkit.ConfigError, match="bool tensor"):
        advkit.diagnose(model, x, y, eps=EPS, robust=torch.ones(3, dtype=torch.bool))


def test_diagnosis_adds_up_over_batches(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Counts over samples, per-sample draws: split batches give the same figures, summed,
    and the same flags (what evaluate relies on across processes)."""
    x, y = batch
    for model in (digits_model(), _trap("saturated")):
        whole = advkit.diagnose(model, x, y, eps=EPS, seed=4)
        parts = [
            advkit.diagnose(model, x[rows], y[rows], eps=EPS, seed=4, sample_ids=rows)
            for rows in (torch.arange(0, 40), torch.arange(40, 64))
        ]
        cost = {"forward_rows", "backward_rows"}  # batch shapes differ: padding differs
        summed = {}
        for k in EVIDENCE_KEYS:
            values = [p.evidence[k] for p in parts]
            summed[k] = max(values) if k in advkit.diagnostics._MAXES else sum(values)
            if k not in cost:
                assert summed[k] == whole.evidence[k], k
        assert judge(summed, score_attack=whole.score_attack).names == whole.names


def test_diagnostics_leave_the_model_and_the_global_rng_alone(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    model = Noisy(copy.deepcopy(digits_model()))  # draws from the global RNG
    model.train()
    model.net[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before, y_before = x.clone(), y.clone()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    d = advkit.diagnose(model, x, y, eps=EPS)
    assert torch.equal(torch.get_rng_state(), state)
    assert "randomized" in d.names
    assert model.training and all(m.training for m in model.modules())
    assert not model.net[0].weight.requires_grad and model.net[0].bias.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_diagnose_input_errors(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = batch
    model = digits_model()
    with pytest.raises(advkit.ConfigError, match="unknown checks"):
        advkit.diagnose(model, x, y, eps=EPS, checks=["gradients"])
    with pytest.raises(advkit.ConfigError, match="eps"):
        advkit.diagnose(model, x, y, eps=-1.0)
    with pytest.raises(advkit.BoundsError):
        advkit.diagnose(model, x + 2, y, eps=EPS)
    with pytest.raises(advkit.LabelError):
        advkit.diagnose(model, x, y + 10, eps=EPS)
    d = advkit.diagnose(model, x, (y + 1) % 10, eps=EPS)  # nothing classified correctly
    assert set(d.skipped) == set(CHECKS[2:]) and d.names == []
    assert d.to_dict()["skipped"] == dict(d.skipped)


# ---------------------------------------------------------------------- BPDA


def test_bpda_forward_is_fn_and_backward_the_identity_or_approx() -> None:
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    quantize = advkit.BPDA(lambda t: torch.round(t * 4) / 4)
    out = quantize(x)
    assert torch.equal(out.detach(), torch.round(x.detach() * 4) / 4)  # exactly fn(x)
    (g,) = torch.autograd.grad((out * torch.arange(3.0)).sum(), x)
    assert torch.equal(g, torch.arange(3.0, dtype=torch.float64).expand(5, 3))
    smooth = advkit.BPDA(lambda t: torch.round(t * 4) / 4, approx=lambda t: t**2)
    (g2,) = torch.autograd.grad(smooth(x).sum(), x)
    assert torch.allclose(g2, 2 * x.detach())
    with torch.no_grad():
        assert torch.equal(smooth(x), out.detach())
    with pytest.raises(advkit.ConfigError, match="approx"):
        advkit.BPDA(lambda t: t.flatten(1)[:, :2])(x)
    with pytest.raises(advkit.ConfigError, match="floating-point"):
        advkit.BPDA(lambda t: (t > 0.5).long())(x)
    with pytest.raises(advkit.ConfigError, match="callable"):
        advkit.BPDA(3)  # type: ignore[arg-type]


def test_bpda_restores_gradient_attacks_on_a_quantized_model(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    """Rounding kills the input gradient: APGD and PGD report ~clean accuracy. Through BPDA
    they break the model as well as a score-based attack with several times their passes."""
    x, y = batch
    masked = _trap("quantized")
    fixed = Quantized(digits_model(), pre=advkit.BPDA(masked.quantize))
    assert torch.equal(masked(x), fixed(x))  # the same model
    score = _RandomSearch(eps=EPS, queries=300)(masked, x, y, generator=_gen()).robust_accuracy()
    for attack in (advkit.APGD(eps=EPS, steps=20), advkit.PGD(eps=EPS, steps=20)):
        before = attack(masked, x, y, generator=_gen()).robust_accuracy()
        after = attack(fixed, x, y, generator=_gen()).robust_accuracy()
        assert before > 0.9
        assert after <= score + 0.05 and after < before - 0.5, (type(attack), after, score)
    d = advkit.diagnose(fixed, x, y, eps=EPS)
    assert d.names == [], str(d)  # the fix works, and the diagnosis says so
    assert "non_differentiable" in d.skipped


# ---------------------------------------------------------------------- EOT and the verdict


def test_verdict_rule() -> None:
    ok = torch.tensor([[True, False, True], [True, False, False], [False, False, True]])
    assert advkit.Verdict(draws=3).decide(ok).tolist() == [True, False, True]
    assert advkit.Verdict(draws=3, quorum=0).decide(ok).tolist() == [True, False, True]
    assert advkit.Verdict(draws=3, quorum=0.7).decide(ok).tolist() == [False, False, False]
    assert advkit.Verdict(draws=2).decide(ok[:2]).tolist() == [True, False, False]  # ties lose
    labels = torch.tensor([0, 1])
    draws = torch.tensor(
        [[[2.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [1.0, 0.0]], [[0.0, 3.0], [0.0, 5.0]]]
    )  # sample 0 wrong in draws 1 and 2; sample 1 wrong in draw 1 only
    logits, success = advkit.Verdict(draws=3).choose(draws, labels)
    assert success.tolist() == [True, False]
    assert torch.equal(logits, torch.stack([draws[1, 0], draws[0, 1]]))
    assert torch.equal(is_success(logits, labels), success)
    assert advkit.Verdict.of(None) == advkit.Verdict() and advkit.Verdict.of(5).draws == 5
    for bad in [{"draws": 0}, {"draws": 2.0}, {"quorum": 1.0}, {"quorum": -0.1}, {"quorum": True}]:
        with pytest.raises(advkit.ConfigError, match="Verdict"):
            advkit.Verdict(**bad)
    with pytest.raises(advkit.ConfigError, match="verdict"):
        advkit.Verdict.of("3")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def noisy() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return (_trap("noisy"), *digits_batch(100))


def _under_seed(seed: int, fn: Any) -> Any:
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the model's noise
        return fn()


def test_one_draw_inflates_success_on_a_noisy_model(
    noisy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = noisy
    apgd = advkit.APGD(eps=0.05, steps=10)
    one = _under_seed(0, lambda: apgd(model, x, y, generator=_gen()))
    many = _under_seed(0, lambda: apgd(model, x, y, generator=_gen(), verdict=15))
    assert one.robust_accuracy() < 0.4 < 0.65 < many.robust_accuracy()
    assert many.forward_passes == one.forward_passes + 15  # the draws are counted
    assert torch.equal(many.success, is_success(many.logits, y))  # the logits agree
    strict = _under_seed(
        0, lambda: apgd(model, x, y, generator=_gen(), verdict=advkit.Verdict(15, quorum=0.9))
    )
    assert strict.robust_accuracy() >= many.robust_accuracy()


def test_a_verdict_on_a_deterministic_model_changes_nothing(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = batch
    model = digits_model()
    for attack in (
        advkit.PGD(eps=EPS, steps=5),
        advkit.DeepFool(),
        advkit.Ensemble([advkit.FGSM(), advkit.PGD(steps=5)], eps=EPS),
    ):
        a = attack(model, x, y, generator=_gen())
        b = attack(model, x, y, generator=_gen(), verdict=5)
        assert torch.equal(a.success, b.success) and torch.equal(a.x_adv, b.x_adv)
        assert b.forward_passes > a.forward_passes
    with pytest.raises(advkit.ConfigError, match="Verdict draws"):
        advkit.FGSM(eps=EPS)(model, x, y, verdict=0)


def test_eot_apgd_is_stronger_than_plain_apgd_on_a_noisy_model() -> None:
    """Scored by a majority over 25 draws, APGD whose every gradient averages 8 passes
    breaks more samples than APGD on one pass's gradient (by 5.5 to 11 points over seeds
    0-3 of the model's noise and the attacks' draws)."""
    model = _trap("noisy")
    x, y = digits_batch(200)
    plain, eot = (
        _under_seed(1, lambda a=a: a(model, x, y, generator=_gen(1), verdict=25))
        for a in (advkit.APGD(eps=0.08, steps=10), advkit.APGD(eps=0.08, steps=10, eot=8))
    )
    assert eot.robust_accuracy() < plain.robust_accuracy() - 0.02
    assert eot.backward_passes == 8 * plain.backward_passes


# ---------------------------------------------------------------------- in evaluate


def test_evaluate_reports_the_flags_and_what_to_do(recwarn: pytest.WarningsRecorder) -> None:
    from torch.utils.data import TensorDataset

    data = TensorDataset(*digits_batch(80))
    attacks = [advkit.FGSM(), advkit.PGD(steps=5)]
    masked = advkit.evaluate(_trap("saturated"), data, attacks, eps=[0.05, EPS], progress=False)
    assert masked.diagnosis is not None and "zero_gradients" in masked.diagnosis.names
    assert masked.robust_accuracy()[-1] > 0.9  # what the gradient attacks claim
    text = str(masked)
    assert "! zero_gradients:" in text and "advkit.APGD(objective=advkit.objectives.dlr)" in text
    out = masked.to_dict(records=False)["diagnostics"]
    assert out["samples"] == 64 and out["objective"] == "cross_entropy"
    assert [f["name"] for f in out["flags"]] == masked.diagnosis.names
    assert all(f["message"] and f["evidence"] for f in out["flags"])
    assert any(issubclass(w.category, advkit.DiagnosticWarning) for w in recwarn)

    recwarn.clear()
    honest = advkit.evaluate(digits_model(), data, attacks, eps=[0.05, EPS], progress=False)
    assert honest.flags == () and "diagnostics (64 samples" in str(honest)
    assert not any(issubclass(w.category, advkit.DiagnosticWarning) for w in recwarn)

    off = advkit.evaluate(_trap("saturated"), data, attacks, eps=EPS, diagnostics=False)
    assert off.diagnosis is None and "diagnostics" not in str(off)
    assert off.to_dict()["diagnostics"] is None
    assert off.robust_accuracy() == masked.robust_accuracy()[-1:]  # the figures are the same

    dlr = advkit.evaluate(  # the objective checked is the evaluation's
        _trap("saturated"), data, advkit.APGD(steps=10, objective=advkit.objectives.dlr),
        eps=EPS, progress=False, diagnostic_samples=32,
    )  # fmt: skip
    assert dlr.flags == () and dlr.diagnosis is not None and dlr.diagnosis.samples == 32
    assert dlr.diagnosis.objective == "dlr"


def test_randomness_dealt_with_is_a_note(
    noisy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    """EOT attacks and a verdict over draws: the evaluation handles the randomness, the
    checks that attack run with the verdict, and nothing is flagged."""
    from torch.utils.data import TensorDataset

    model, x, y = noisy
    data = TensorDataset(x[:40], y[:40])
    report = _under_seed(
        3,
        lambda: advkit.evaluate(model, data, advkit.APGD(steps=5, eot=4), eps=0.05, verdict=9),
    )
    d = report.diagnosis
    assert d is not None and d.names == [] and "randomized" in d.notes, str(d)
    assert "gradient_free_stronger" in d.checks and d.evidence["verdict_draws"] == 9
    assert "randomized: two forward passes differ" in str(report)
    d = _under_seed(3, lambda: advkit.diagnose(model, x[:40], y[:40], eps=0.05, verdict=9))
    assert d.names == ["randomized"] and "unbounded_not_broken" in d.checks


def test_evaluate_with_a_verdict(noisy: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    from torch.utils.data import TensorDataset

    model, x, y = noisy
    data = TensorDataset(x[:48], y[:48])
    attack = advkit.APGD(steps=5, eot=4)
    one = _under_seed(2, lambda: advkit.evaluate(model, data, attack, eps=0.05, diagnostics=False))
    many = _under_seed(
        2, lambda: advkit.evaluate(model, data, attack, eps=0.05, verdict=9, diagnostics=False)
    )
    assert many.verdict == advkit.Verdict(draws=9) and one.verdict.draws == 1
    assert many.robust_accuracy()[0] > one.robust_accuracy()[0]
    assert "verdict over 9 draws" in str(many)
    assert many.to_dict(records=False)["verdict"] == {"draws": 9, "quorum": 0.5}


CLI_MODEL = """
import torch
from torch import nn


class Hot(nn.Module):  # logits times 100: a saturated softmax
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, x):
        return self.net(x) * 100


def build():
    return Hot()
"""


def test_the_command_line_prints_the_flags(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from advkit.cli import main

    (tmp_path / "hot.py").write_text(CLI_MODEL)
    torch.save({f"net.{k}": v for k, v in digits_model().state_dict().items()}, tmp_path / "w.pt")
    x, y = digits_batch(40)
    torch.save((x, y), tmp_path / "data.pt")
    argv = [
        "eval", "--model", f"{tmp_path / 'hot.py'}:build", "--weights", str(tmp_path / "w.pt"),
        "--data", str(tmp_path / "data.pt"), "--attack", "pgd:steps=5", "--eps", "0.1",
        "--no-progress", "--json", str(tmp_path / "r.json"), "--no-records",
    ]  # fmt: skip
    with pytest.warns(advkit.DiagnosticWarning):
        assert main(argv) == 0
    out = capsys.readouterr().out
    assert "diagnostics (40 samples" in out and "! zero_gradients:" in out
    assert "advkit.APGD(objective=advkit.objectives.dlr)" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert "zero_gradients" in [f["name"] for f in saved["diagnostics"]["flags"]]

    assert main([*argv, "--no-diagnostics", "--verdict-draws", "3"]) == 0
    out = capsys.readouterr().out
    assert "diagnostics" not in out and "verdict over 3 draws" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["diagnostics"] is None and saved["verdict"]["draws"] == 3
    with pytest.raises(SystemExit):
        main([*argv, "--diagnostic-samples", "0"])


def test_is_success_takes_a_known_finiteness_test() -> None:
    """``finite=`` (the rows' finiteness, where a caller computed it) gives the same rule: a
    row with a NaN or infinite logit never succeeds, and the given test is the one used."""
    logits = torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [2.0, float("inf")], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 0, 1])
    finite = torch.isfinite(logits).all(dim=1)
    assert is_success(logits, labels).tolist() == [True, False, False, False]
    assert torch.equal(is_success(logits, labels, finite=finite), is_success(logits, labels))
    targets = torch.tensor([1, 1, 1, 1])
    assert torch.equal(
        is_success(logits, labels, targets, finite=finite), is_success(logits, labels, targets)
    )
    # the given test is used as it is, not recomputed: row 0 marked non-finite loses its
    # success, row 2 (an infinite logit) marked finite is judged by its argmax
    given = torch.tensor([False, False, True, True])
    assert is_success(logits, labels, finite=given).tolist() == [False, False, True, False]
