"""advkit: correct, fast, composable adversarial attacks for PyTorch."""

from advkit import checks, distributed, functional, io, norms, objectives, targets
from advkit._version import __version__
from advkit.attacks import APGD as APGD
from advkit.attacks import BIM as BIM
from advkit.attacks import CW as CW
from advkit.attacks import FAB as FAB
from advkit.attacks import FGSM as FGSM
from advkit.attacks import PGD as PGD
from advkit.attacks import Attack, MinNormAttack
from advkit.attacks import AutoAttack as AutoAttack
from advkit.attacks import DeepFool as DeepFool
from advkit.attacks import Ensemble as Ensemble
from advkit.attacks import GaussianNoise as GaussianNoise
from advkit.attacks import MultiTargeted as MultiTargeted
from advkit.attacks import Square as Square
from advkit.attacks import Sweep as Sweep
from advkit.attacks import UniformNoise as UniformNoise
from advkit.attacks.registry import REGISTRY as _REGISTRY
from advkit.checks import (
    AdvkitError,
    BoundsError,
    ConfigError,
    DiagnosticWarning,
    GradientWarning,
    InputError,
    LabelError,
    ModelError,
    ModelOutputError,
    ProbabilityOutputWarning,
)
from advkit.diagnostics import Diagnosis, Flag, diagnose
from advkit.evaluation import RobustnessReport, evaluate
from advkit.models import BPDA, Classifier, model_guard, wrap
from advkit.norms import L1, L2, Linf, Norm
from advkit.result import AttackResult, Part, Verdict

__all__ = [
    "L1",
    "L2",
    "BPDA",
    "AdvkitError",
    "Attack",
    "AttackResult",
    "BoundsError",
    "Classifier",
    "ConfigError",
    "DiagnosticWarning",
    "Diagnosis",
    "Flag",
    "GradientWarning",
    "InputError",
    "LabelError",
    "Linf",
    "MinNormAttack",
    "ModelError",
    "ModelOutputError",
    "Norm",
    "Part",
    "ProbabilityOutputWarning",
    "RobustnessReport",
    "Verdict",
    "__version__",
    "checks",
    "diagnose",
    "distributed",
    "evaluate",
    "functional",
    "io",
    "model_guard",
    "norms",
    "objectives",
    "targets",
    "wrap",
    *(entry.name for entry in _REGISTRY),
]
