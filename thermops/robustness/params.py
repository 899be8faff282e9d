"""The `gate` section of params.yaml as frozen dataclasses (built once, at the edge)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThreatModel:
    """One norm: epsilons (model-input units, per tubelet), the large eps of the sanity check, attacks."""

    eps: list[float]
    large_eps: float
    attacks: list[str]


@dataclass(frozen=True)
class PGDParams:
    steps: int
    restarts: int
    step_size: float  # fraction of eps per step


@dataclass(frozen=True)
class APGDParams:
    steps: int


@dataclass(frozen=True)
class CWParams:
    subset: int  # C&W is the slowest attack: run it on the first `subset` attacked tubelets
    steps: int
    search_steps: int
    c_init: float
    lr: float


@dataclass(frozen=True)
class SanityParams:
    monotone_tol: float  # robust accuracy may rise this much with eps (sampling noise)
    large_eps_max_accuracy: float  # "about 0" at the large eps (or out to each row's nearest known adversarial)
    more_steps_factor: int  # PGD with factor x steps must not do worse
    more_steps_tol: float
    max_zero_grad_fraction: float
    black_box_tol: float
    random_draws: int


@dataclass(frozen=True)
class CorruptionParams:
    subset: int
    names: list[str]  # empty: every corruption in the registry
    severities: dict[str, list[float]]  # overrides of the class tables


@dataclass(frozen=True)
class WorstCaseParams:
    subset: int
    budget_px: float
    steps: int


@dataclass(frozen=True)
class PerspectiveParams:
    subset: int
    magnitudes_px: list[float]
    decision_px: float  # the magnitude the `flip_rate` figure is taken at
    worst_case: WorstCaseParams


@dataclass(frozen=True)
class RadiometricParams:
    gain_changes: list[float]  # relative
    offset_k: list[float]  # kelvin, corner to corner


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
    flip rate and stability slope may grow `relative_tol` (relative). Clean accuracy is also
    compared camera by camera, with the same margin on each camera's own n; a camera with
    fewer than `min_camera_n` test tubelets on either side is skipped (its SE says nothing)."""

    accuracy_tol: float
    relative_tol: float
    z: float
    min_camera_n: int

    def __post_init__(self) -> None:
        if self.min_camera_n < 1:
            raise ValueError(f"min_camera_n must be >= 1, got {self.min_camera_n}")


@dataclass(frozen=True)
class ReportParams:
    examples: int
    occlusion_window: list[int]


@dataclass(frozen=True)
class GateParams:
    """params `gate`."""

    enforce: bool
    split: str
    threads: int  # torch CPU threads (1 avoids spin-wait collapse on a shared 2-core machine; 0: torch default)
    attack_subset: int
    threat_models: dict[str, ThreatModel]
    thresholds: Thresholds
    pgd: PGDParams
    apgd: APGDParams
    cw: CWParams
    sanity: SanityParams
    corruptions: CorruptionParams
    perspective: PerspectiveParams
    radiometric: RadiometricParams
    regression: Regression
    report: ReportParams
