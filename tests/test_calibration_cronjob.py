"""The calibration watcher's CronJob manifest: valid Kubernetes objects that run the watcher as intended."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.recalibrate import build_parser
from thermops.camera.change import TriggerParams
from thermops.config import load_params, section

MANIFEST = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "calibration-watcher-cronjob.yaml"


def _strict(data, type_name: str, where: str) -> None:
    """Check `data` against the Kubernetes client's model `type_name`: no unknown keys, required ones present."""
    import kubernetes.client as k8s

    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        assert isinstance(data, list), where
        for i, item in enumerate(data):
            _strict(item, m.group(1), f"{where}[{i}]")
        return
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        assert isinstance(data, dict), where
        for k, v in data.items():
            _strict(v, m.group(1), f"{where}.{k}")
        return
    cls = getattr(k8s, type_name, None)
    if cls is None:  # a primitive (str, int, bool, object, datetime)
        return
    assert isinstance(data, dict), f"{where}: expected a mapping for {type_name}"
    by_json = {v: k for k, v in cls.attribute_map.items()}
    unknown = set(data) - set(by_json)
    assert not unknown, f"{where}: unknown field(s) {sorted(unknown)} in {type_name}"
    for key, value in data.items():
        _strict(value, cls.openapi_types[by_json[key]], f"{where}.{key}")
    # The generated constructors raise on a missing required field.
    k8s.ApiClient()._ApiClient__deserialize(data, type_name)


@pytest.fixture(scope="module")
def docs():
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text())}


def test_manifest_objects_are_valid_kubernetes(docs):
    assert set(docs) == {"ConfigMap", "PersistentVolumeClaim", "CronJob"}
    for kind, doc in docs.items():
        _strict({k: v for k, v in doc.items()}, f"V1{kind}", kind)


def test_cronjob_runs_one_cluster_pass_with_persistent_state(docs):
    cron = docs["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (watcher,) = pod["containers"]
    script = " ".join(watcher["args"])
    argv = script.split("exec python -m pipeline.recalibrate ")[1].split()
    args = build_parser().parse_args(argv)  # the command line the CLI really accepts
    assert (args.command, args.once, args.mode) == ("watch", True, "cluster")
    # The state file's folder is the persistent volume, under the checkout the watcher runs in.
    state_dir = Path(
        section(load_params(MANIFEST.parents[2] / "params.yaml"), "trigger", TriggerParams).state_file
    ).parent
    mounts = {m["name"]: m["mountPath"] for m in watcher["volumeMounts"]}
    assert mounts["state"] == f"{watcher['workingDir']}/{state_dir}"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    # A full clone (history is how the deployed calibration is found), into the working dir.
    clone = " ".join(pod["initContainers"][0]["args"])
    assert "git clone" in clone and "--depth" not in clone and clone.endswith(watcher["workingDir"])


def test_the_deployed_lineage_is_the_served_model_never_the_gate_output(docs):
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (watcher,) = pod["containers"]
    argv = " ".join(watcher["args"]).split("exec python -m pipeline.recalibrate ")[1].split()
    args = build_parser().parse_args(argv)
    inits = {c["name"]: c for c in pod["initContainers"]}
    fetch = " ".join(inits["deployed-model"]["args"])
    # The init container fills the folder the watcher reads, on the volume both mount.
    assert fetch.rstrip().endswith(str(args.deployed_model)) and "$THERMOPS_DEPLOYED_MODEL" in fetch
    assert "card.json" in fetch and "calibration/*" in fetch
    mounts = {m["mountPath"] for m in inits["deployed-model"]["volumeMounts"]}
    assert any(str(args.deployed_model).startswith(m + "/") for m in mounts)
    assert "THERMOPS_DEPLOYED_MODEL" in docs["ConfigMap"]["data"]
    assert "models/gated" not in MANIFEST.read_text().split("apiVersion", 1)[1]  # comments aside


def test_schedule_matches_the_poll_interval(docs):
    interval = section(load_params(MANIFEST.parents[2] / "params.yaml"), "trigger", TriggerParams).poll_interval_s
    minute = docs["CronJob"]["spec"]["schedule"].split()[0]
    assert minute == f"*/{int(interval // 60)}" and interval % 60 == 0
