"""advkit: correct, fast, composable adversarial attacks for PyTorch."""

from advkit import checks, distributed, functional, norms, objectives, targets
from advkit._version import __version__
from advkit.attacks import (
    BIM,
    CW,
    FGSM,
    PGD,
    Attack,
    DeepFool,
    GaussianNoise,
    MinNormAttack,
    UniformNoise,
)
from advkit.checks import (
    AdvkitError,
    BoundsError,
    ConfigError,
    InputError,
    LabelError,
    ModelOutputError,
    ProbabilityOutputWarning,
)
from advkit.models import Classifier, model_guard, wrap
from advkit.norms import L1, L2, Linf, Norm
from advkit.result import AttackResult

__all__ = [
    "BIM",
    "CW",
    "FGSM",
    "L1",
    "L2",
    "PGD",
    "AdvkitError",
    "Attack",
    "AttackResult",
    "BoundsError",
    "Classifier",
    "ConfigError",
    "DeepFool",
    "GaussianNoise",
    "InputError",
    "LabelError",
    "Linf",
    "MinNormAttack",
    "ModelOutputError",
    "Norm",
    "ProbabilityOutputWarning",
    "UniformNoise",
    "__version__",
    "checks",
    "distributed",
    "functional",
    "model_guard",
    "norms",
    "objectives",
    "targets",
    "wrap",
]
