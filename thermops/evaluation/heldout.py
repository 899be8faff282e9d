"""Held-out data for the real-imagery evaluation: which sources, the leak guards, and scoring a model on them.

Two kinds of held-out real source (params `real_eval`):

- `heldout`: cameras the model never sees. Every tubelet of the source is scored;
  a model whose training data include the source is refused (`check_heldout`).
- `by_image`: sources scored on their test split only. Still images are split
  whole, by image, from the clip list alone (`thermops.data.extract.still_image_splits`),
  so the scored images are the same whether or not the model trained on the
  source's other images, and a model that did is checked not to have trained on
  the scored ones (`check_by_image`).
"""

from __future__ import annotations

from dataclasses import dataclass

from thermops.data.prepared import PreparedData

SYNTHETIC = "synthetic"


class HeldoutLeak(ValueError):
    """A source or an image scored as held out was in the model's training data."""


@dataclass(frozen=True)
class RealEvalParams:
    """The `real_eval` section of params.yaml.

    Attributes:
        heldout: real sources (names in `ingest.sources`) the model must never train on;
            every tubelet is scored.
        by_image: real sources scored on their test split (images held out); they may
            also be in `data.sources`.
        positive: the alarm class of the one-vs-rest figures (person).
        stride: `prepare.stride` for the held-out data (more windows of sequences).
        background_per_clip: `prepare.background_per_clip` for the held-out data (more negatives).
        require: a source whose folder is absent is an error (true) or reported `missing` (false).
        range_bins_m: ground-range bin edges of the per-range figures (synthetic test split).
        size_bins_px: apparent-size bin edges (box, px) of the per-size figures (every source).
        examples: mistakes shown per source in the report.
    """

    heldout: list[str]
    by_image: list[str]
    positive: str
    stride: int
    background_per_clip: int
    require: bool
    range_bins_m: list[float]
    size_bins_px: list[float]
    examples: int

    def __post_init__(self) -> None:
        both = sorted(set(self.heldout) & set(self.by_image))
        if both:
            raise ValueError(f"{both} are both in heldout and by_image; a source is scored one way")
        if SYNTHETIC in self.heldout + self.by_image:
            raise ValueError("synthetic is scored on its test split always; list real sources only")
        if len(set(self.heldout + self.by_image)) != len(self.heldout + self.by_image):
            raise ValueError("a source is listed twice")
        if self.stride < 1 or self.background_per_clip < 0 or self.examples < 0:
            raise ValueError("stride >= 1, background_per_clip >= 0 and examples >= 0 are required")
        for name in ("range_bins_m", "size_bins_px"):
            edges = getattr(self, name)
            if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
                raise ValueError(f"{name} must be at least two increasing edges")

    @property
    def sources(self) -> list[str]:
        """Every real source to score, held-out cameras first."""
        return list(self.heldout) + list(self.by_image)


def check_heldout(cfg: RealEvalParams, trained_sources: list[str]) -> None:
    """Refuse a model trained on a source that `real_eval.heldout` says it never saw."""
    leaked = sorted(set(cfg.heldout) & set(trained_sources))
    if leaked:
        raise HeldoutLeak(
            f"held-out source(s) {leaked} are in the model's training data (its card's data.sources "
            f"{sorted(trained_sources)}); take them out of data.sources or out of real_eval.heldout"
        )


def check_by_image(scored: PreparedData, prepared: PreparedData, sources: list[str]) -> None:
    """No image (clip) scored for a by-image source may have given train or val tubelets to `prepared`."""
    for source in sources:
        seen = {r["clip_id"] for r in prepared.rows if r["source"] == source and r["split"] in ("train", "val")}
        leaked = sorted({r["clip_id"] for r in scored.rows if r["source"] == source} & seen)
        if leaked:
            raise HeldoutLeak(
                f"{source}: {len(leaked)} scored image(s) gave training or validation tubelets, e.g. {leaked[:3]}"
            )
