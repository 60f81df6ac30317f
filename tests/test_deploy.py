"""Kubernetes and KServe manifests, validated statically: no Kubernetes cluster can run here (no image registry),
so none of this was ever applied to one.

- every kustomize overlay renders (`kubectl kustomize`), and every rendered object validates, strictly, against
  the Kubernetes schema of the oldest and newest versions kubernetes-validate knows;
- checkov's Kubernetes policies pass on every overlay and on the KServe predictor's pod; the checks skipped
  are annotated in the manifests with their reasons;
- each InferenceService (models in the image, and copied from a bucket by KServe's storage initializer) validates
  against a schema of its fields (hand-written from KServe's API reference, see
  tests/deploy/) and its predictor against Kubernetes' PodSpec, and it declares what KServe requires of a
  custom container; the routes it probes are the service's own;
- the Ray Serve config validates against Ray's own schema.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version

from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
KSERVE = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))  # models in the image, and copied from a bucket
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
VERSIONS = [min(all_versions(), key=lambda v: tuple(map(int, v.split(".")))), latest_version()]
KUBECTL = shutil.which("kubectl")
CHECKOV = next(filter(None, [shutil.which("checkov"), str(ROOT / ".venv-tools" / "bin" / "checkov")
                             if (ROOT / ".venv-tools" / "bin" / "checkov").is_file() else None]), None)
# Predictor fields KServe adds to a PodSpec (V1beta1ComponentExtensionSpec); the rest is a PodSpec.
EXTENSION = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency", "timeout",
             "canaryTrafficPercent", "labels", "annotations", "deploymentStrategy", "batcher", "logger"}


def render(overlay: str) -> list[dict]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl, or Debian's kubernetes-client)")
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return list(yaml.safe_load_all(out.stdout))


def by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def kserve(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def predictor_pod(isvc: dict) -> dict:
    spec = {k: v for k, v in isvc["spec"]["predictor"].items() if k not in EXTENSION}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": isvc["metadata"], "spec": spec}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_a_complete_hardened_deployment(overlay):
    objects = by_kind(render(overlay))
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= set(objects)
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    selectors = [objects["Service"]["spec"]["selector"],
                 objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
                 objects["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"]]
    assert all(s == deployment["spec"]["selector"]["matchLabels"] and s.items() <= labels.items() for s in selectors)
    assert objects["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"requests", "limits"} <= set(container["resources"])
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])  # the upload spool, root read-only
    cuda = overlay.startswith("cuda")
    assert container["resources"]["limits"].get("nvidia.com/gpu") == ("1" if cuda else None)
    bucket = overlay.endswith("bucket")
    assert container["image"].startswith("rnnserve-cuda:" if cuda else "rnnserve-store:" if bucket else "rnnserve:")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env.get("RNNSERVE_PROVIDER") == ("cuda" if cuda else None)
    if overlay.endswith("models-volume"):
        assert {"mountPath": "/models", "name": "models", "readOnly": True} in container["volumeMounts"]
        assert "PersistentVolumeClaim" in objects
    if bucket:  # replicas from one bucket: each polls it, serves its own verified cache, reads a mounted Secret
        assert env["RNNSERVE_MODELS_DIR"].startswith("s3://") and float(env["RNNSERVE_REPOSITORY_POLL_S"]) > 0
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["models-cache"]["mountPath"] == env["RNNSERVE_MODELS_CACHE_DIR"] and "emptyDir" in volumes[
            "models-cache"]
        assert volumes["store-credentials"]["secret"]["secretName"] and mounts["store-credentials"]["readOnly"]
        assert env["AWS_SHARED_CREDENTIALS_FILE"].startswith(mounts["store-credentials"]["mountPath"] + "/")
        egress = objects["NetworkPolicy"]["spec"]["egress"]
        assert {"port": 443, "protocol": "TCP"} in egress[0]["ports"] and len(egress) == 2  # HTTPS and DNS only
    else:
        assert "egress" not in objects["NetworkPolicy"]["spec"]  # nothing out: models come with the image


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_validate_against_the_kubernetes_schema(overlay, version):
    for doc in render(overlay):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_mistake():
    deployment = by_kind(render("cpu"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, latest_version(), strict=True)


def checkov(path: Path) -> dict:
    if CHECKOV is None:
        pytest.skip("checkov is not installed (make test puts it in .venv-tools)")
    out = subprocess.run([CHECKOV, "-f", str(path), "--framework", "kubernetes", "--skip-download", "-o", "json"],
                         capture_output=True, text=True)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.mark.parametrize("target", OVERLAYS + [f"kserve {p.name}" for p in KSERVE])
def test_policy_scan_passes_with_every_exception_justified(target, tmp_path):
    docs = ([predictor_pod(kserve(KSERVE[0].parent / target.split()[1]))] if target.startswith("kserve ")
            else render(target))
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    report = checkov(path)
    failed = report["results"]["failed_checks"]
    assert failed == [], [(c["check_id"], c["check_name"], c["resource"]) for c in failed]
    assert report["summary"]["passed"] >= 40
    reasons = {}  # the manifests' checkov.io/skipN annotations: CHECK_ID=reason
    for doc in docs:
        for key, value in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                reasons[check] = reason
    for skipped in report["results"]["skipped_checks"]:
        assert len(reasons.get(skipped["check_id"], "")) > 20, f"{skipped['check_id']} is skipped without a reason"


@pytest.mark.parametrize("path", KSERVE, ids=lambda p: p.name)
def test_the_inferenceservice_is_a_valid_kserve_custom_predictor(api, path):
    isvc = kserve(path)
    schema = json.loads((ROOT / "tests" / "deploy" / "kserve-inferenceservice-v1beta1.schema.json").read_text())
    jsonschema.validate(isvc, schema)
    kubernetes_validate.validate(predictor_pod(isvc), latest_version(), strict=True)
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # KServe's name for the custom predictor's container
    (port,) = container["ports"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RNNSERVE_PORT"] == str(port["containerPort"]) == "8080" and env["RNNSERVE_HOST"] == "0.0.0.0"
    if "STORAGE_URI" in env:  # KServe's storage initializer copies the bucket to /mnt/models, read from there
        assert env["STORAGE_URI"].startswith("s3://") and env["RNNSERVE_MODELS_DIR"] == "/mnt/models"
        assert isvc["spec"]["predictor"]["serviceAccountName"]  # whose Secret holds the initializer's keys
    probes = [container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]]
    assert [p["path"] for p in probes] == ["/v2/health/ready", "/v2/health/live"]
    assert all(p["port"] == port["containerPort"] for p in probes)  # Knative refuses probes on another port
    # The routes KServe and its clients use are the service's own.
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/sentiment-lstm", "/v2/models/sentiment-lstm/ready"):
        assert api.get(path).status_code == 200, path
    bad = dict(isvc, spec={"predictor": dict(isvc["spec"]["predictor"], scaleMetric="latency")})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_the_ray_serve_config_is_valid_for_ray():
    schema = pytest.importorskip("ray.serve.schema", reason="Ray is the [ray] extra")
    config = yaml.safe_load((ROOT / "deploy" / "ray" / "serve.yaml").read_text())
    config = schema.ServeDeploySchema.model_validate(config)
    (app,) = config.applications
    assert app.import_path == "rnnserve.service.engines.ray_serve:app"
    (deployment,) = app.deployments
    assert deployment.max_ongoing_requests >= 64 and deployment.autoscaling_config["max_replicas"] >= 2
