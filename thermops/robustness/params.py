"""The `gate` section of params.yaml as frozen dataclasses (built once, at the edge)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThreatModel:
    """One norm: epsilons (model-input units, per tubelet), the large eps of the sanity check, attacks."""

    eps: list[float]
    large_eps: float
    attacks: list[str]


@dataclass(frozen=True)
class PGDParams:
    steps: int = 10
    restarts: int = 1
    step_size: float = 0.25  # fraction of eps per step


@dataclass(frozen=True)
class APGDParams:
    steps: int = 10


@dataclass(frozen=True)
class CWParams:
    subset: int = 12  # C&W is the slowest attack: run it on the first `subset` attacked tubelets
    steps: int = 30
    search_steps: int = 3
    c_init: float = 1.0
    lr: float = 0.02


@dataclass(frozen=True)
class SanityParams:
    monotone_tol: float = 0.05  # robust accuracy may rise this much with eps (sampling noise)
    large_eps_max_accuracy: float = 0.05  # "about 0" at the large eps
    more_steps_factor: int = 3  # PGD with factor x steps must not do worse
    more_steps_tol: float = 0.05
    max_zero_grad_fraction: float = 0.0
    black_box_tol: float = 0.05
    random_draws: int = 4


@dataclass(frozen=True)
class CorruptionParams:
    subset: int = 64
    names: list[str] = field(default_factory=list)  # empty: every corruption in the registry
    severities: dict[str, list[float]] = field(default_factory=dict)  # overrides of the class tables


@dataclass(frozen=True)
class WorstCaseParams:
    subset: int = 24
    budget_px: float = 2.0
    steps: int = 8


@dataclass(frozen=True)
class PerspectiveParams:
    subset: int = 64
    magnitudes_px: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 3.0])
    decision_px: float = 1.0  # the magnitude the `flip_rate` figure is taken at
    worst_case: WorstCaseParams = field(default_factory=WorstCaseParams)


@dataclass(frozen=True)
class RadiometricParams:
    gain_changes: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4])  # relative
    offset_k: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])  # kelvin, corner to corner


@dataclass(frozen=True)
class Thresholds:
    """Absolute pass/fail thresholds; robust_accuracy is per threat model and eps."""

    clean_accuracy: float
    robust_accuracy: dict[str, dict[float, float]]
    max_mean_ce: float
    max_flip_rate: float
    max_stability_slope: float


@dataclass(frozen=True)
class Regression:
    """Tolerances against the blessed model: accuracies may drop `accuracy_tol` (absolute)
    plus `z` standard errors of the difference of the two measured accuracies (so that the
    sampling noise of a few dozen attacked tubelets is not called a regression); mean CE,
    flip rate and stability slope may grow `relative_tol` (relative)."""

    accuracy_tol: float = 0.03
    relative_tol: float = 0.1
    z: float = 1.0


@dataclass(frozen=True)
class ReportParams:
    examples: int = 3
    occlusion_window: list[int] = field(default_factory=lambda: [4, 8, 8])


@dataclass(frozen=True)
class GateParams:
    """params `gate`."""

    enforce: bool
    split: str
    threads: int  # torch CPU threads (1 avoids spin-wait collapse on a shared 2-core machine; 0: torch default)
    attack_subset: int
    threat_models: dict[str, ThreatModel]
    thresholds: Thresholds
    pgd: PGDParams = field(default_factory=PGDParams)
    apgd: APGDParams = field(default_factory=APGDParams)
    cw: CWParams = field(default_factory=CWParams)
    sanity: SanityParams = field(default_factory=SanityParams)
    corruptions: CorruptionParams = field(default_factory=CorruptionParams)
    perspective: PerspectiveParams = field(default_factory=PerspectiveParams)
    radiometric: RadiometricParams = field(default_factory=RadiometricParams)
    regression: Regression = field(default_factory=Regression)
    report: ReportParams = field(default_factory=ReportParams)
