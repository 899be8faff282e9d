"""`python -m pipeline compile|submit`: the Kubeflow pipeline generated from dvc.yaml.

    python -m pipeline compile [--out pipeline.yaml] [--data-source embedded|dvc] [--image IMG] [--data-rev REV] [--local]
    python -m pipeline submit --host URL [--namespace NS] [--experiment NAME] [--token T] [--image IMG]
                              [-p key=value ...] [--data-rev REV] [--caching|--no-caching]
                              [--wait [--timeout S]] [--dry-run]

Compiling or submitting for a cluster refuses an image that is not pinned (a digest or a
content tag; `latest` never), a production store that is a local folder and a missing
serving-image registry (`pipeline.pipeline.cluster_checks`); `compile --local` is for
kfp.local and in-image test runs only.

Exit status: 0 done (with --wait: the run SUCCEEDED); 1 an expected error (bad override,
unknown revision, unpinned image, server error), one `error: ...` line on stderr; 2 bad
command line; with --wait: 3 the run FAILED, 4 it was CANCELED or SKIPPED, 5 it had not
finished after --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _compile(args: argparse.Namespace) -> int:
    from pipeline import datahash
    from pipeline.pipeline import compile_pipeline, kubeflow_params
    from thermops.config import load_params

    # the defaults of data_hash and git_rev: the data at --data-rev (a branch resolves to its commit)
    params = load_params(Path(args.root) / "params.yaml")
    source = args.data_source or kubeflow_params(params).data_source
    rev = datahash.resolve(args.root, params, data_source=source, rev=args.data_rev)
    out = compile_pipeline(
        args.out,
        root=args.root,
        data_source=source,
        image=args.image,
        git_rev=rev.git_rev,
        data_hash=rev.data_hash,
        local=args.local,
    )
    print(out)
    return 0


def _submit(args: argparse.Namespace) -> int:
    from pipeline.submit import WAIT_EXIT, parse_override, prepare_submission, send, wait_for_run

    overrides = dict(parse_override(p) for p in args.param)
    token = args.token or os.environ.get("KFP_TOKEN")
    sub = prepare_submission(
        args.host,
        overrides,
        args.namespace,
        args.experiment,
        args.root,
        args.data_rev,
        args.run_name,
        image=args.image,
        enable_caching=args.caching,
    )
    if args.dry_run:
        summary = sub.summary()
        summary["token"] = "set" if token else None  # never printed
        summary["pipeline_spec_bytes"] = len(sub.pipeline_yaml)
        print(json.dumps(summary, indent=2, sort_keys=True))
        if args.out:
            Path(args.out).write_text(sub.pipeline_yaml)
            print(f"pipeline spec written to {args.out}")
        return 0
    run_id, url = send(sub, token)
    print(f"run id: {run_id}")
    print(f"url: {url}", flush=True)
    if not args.wait:
        return 0
    state = wait_for_run(sub, run_id, token, timeout=args.timeout, poll=args.poll)
    print(f"run {run_id} finished: {state}" if state in WAIT_EXIT else f"run {run_id}: {state}")
    return WAIT_EXIT.get(state, 5)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and compile or submit."""
    ap = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT), help="repository with dvc.yaml and params.yaml")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="write the pipeline YAML")
    c.add_argument("--out", default="pipeline.yaml")
    c.add_argument("--data-source", choices=["embedded", "dvc"], default=None, help="default: kubeflow.data_source")
    c.add_argument("--image", default=None, help="default: kubeflow.image")
    c.add_argument("--data-rev", default=None, help="git revision of the data for the defaults (default: HEAD)")
    c.add_argument("--local", action="store_true", help="for kfp.local / in-image tests: no cluster checks")
    s = sub.add_parser("submit", help="create a run with kfp.Client")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    s.add_argument("--namespace", default=None, help="multi-user Kubeflow namespace")
    s.add_argument("--experiment", default=None, help="experiment name (default: the pipeline name)")
    s.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN)")
    s.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="params.yaml override")
    s.add_argument("--data-rev", default=None, help="git revision of the data (resolved to a commit)")
    s.add_argument("--run-name", default=None)
    s.add_argument("--image", default=None, help="default: kubeflow.image (must be pinned)")
    cache = s.add_mutually_exclusive_group()
    cache.add_argument("--caching", dest="caching", action="store_true", default=None, help="cache every task")
    cache.add_argument("--no-caching", dest="caching", action="store_false", help="re-run every task")
    s.add_argument("--wait", action="store_true", help="follow the run to its end; exit with its state")
    s.add_argument("--timeout", type=float, default=24 * 3600.0, help="with --wait: seconds (default 1 day)")
    s.add_argument("--poll", type=float, default=15.0, help="with --wait: seconds between state checks")
    s.add_argument("--dry-run", action="store_true", help="compile and print what would be sent")
    s.add_argument("--out", default=None, help="with --dry-run: also write the pipeline spec here")
    args = ap.parse_args(argv)

    from pipeline.datahash import DataRevisionError
    from pipeline.graph import GraphError
    from pipeline.pipeline import ClusterConfigError
    from pipeline.submit import SubmitError
    from thermops.config import ParamsError

    try:
        return _compile(args) if args.command == "compile" else _submit(args)
    except (SubmitError, DataRevisionError, GraphError, ParamsError, ClusterConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
