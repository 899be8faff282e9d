"""Turn a params preset (a partial params.yaml, e.g. params-gpu.yaml) into `dvc exp run -S` arguments.

    dvc exp run $(.venv/bin/python scripts/preset.py params-gpu.yaml)
    .venv/bin/python scripts/preset.py params-gpu.yaml --check     # every key exists and the sections still parse

The preset holds only the keys it changes; each leaf becomes `-S 'dotted.key=<YAML value>'`, so
DVC records the experiment's params as usual and `params.yaml` stays the one source of every
other knob. A key the preset names that params.yaml lacks is an error (a typo would otherwise
be a silent no-op).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml


def flatten(preset: dict, base: dict, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of `preset`; mappings recurse where `base` has a mapping too."""
    out = []
    for k, v in preset.items():
        key = f"{prefix}{k}"
        if not isinstance(base, dict) or k not in base:
            raise KeyError(f"{key}: not a key of params.yaml")
        if isinstance(v, dict) and isinstance(base[k], dict) and v:
            out += flatten(v, base[k], key + ".")
        else:
            out.append((key, v))
    return out


def dvc_args(preset: dict, base: dict) -> list[str]:
    """`-S key=value` pairs (values as flow-style YAML) for `dvc exp run`."""
    args = []
    for key, value in flatten(preset, base):
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        text = text.removesuffix("\n...").removesuffix("...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preset", type=Path)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--check", action="store_true", help="also build the params sections of the merged file")
    args = ap.parse_args(argv)
    base = yaml.safe_load(args.params.read_text())
    preset = yaml.safe_load(args.preset.read_text()) or {}
    try:
        out = dvc_args(preset, base)
    except KeyError as err:
        print(f"error: {args.preset}: {err.args[0]}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.check:
        from thermops.config import merge_params

        merged = merge_params(base, preset)
        check_sections(merged)
        print(f"{args.preset}: {len(out) // 2} keys, every section parses")
        return
    print(" ".join(shlex.quote(a) for a in out))


def check_sections(params: dict) -> None:
    """Build the params dataclasses of the data, training and evaluation sections (raises on a bad value)."""
    from components.finetune import FinetuneParams
    from components.pretrain import PretrainParams
    from thermops.config import section
    from thermops.data.extract import PrepareParams
    from thermops.evaluation.heldout import RealEvalParams
    from thermops.model.network import ModelConfig
    from thermops.model.preprocess import InputSpec
    from thermops.world.synth import SynthParams

    for name, cls in (("synth", SynthParams), ("prepare", PrepareParams), ("model", ModelConfig), ("input", InputSpec),
                      ("pretrain", PretrainParams), ("finetune", FinetuneParams), ("real_eval", RealEvalParams)):  # fmt: skip
        section(params, name, cls)


if __name__ == "__main__":
    main()
