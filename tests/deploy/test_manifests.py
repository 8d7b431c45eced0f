"""deploy/kubernetes/ kept true without a cluster.

- Every manifest validates against the Kubernetes API schemas that ``kubernetes-validate``
  ships in its wheel (offline), strictly (an unknown or misspelt field fails), for the oldest
  and the newest Kubernetes version named below; ``kubectl kustomize`` builds the base and
  the KServe variant, and what it builds validates too.
- The KServe ``InferenceService`` (a CRD, no schema here) has its required fields, and its
  predictor's pod fields validate against the core ``PodSpec`` schema.
- The probes' paths are routes of the app and answer 200; the ports are the container's
  ``GRADSERVE_PORT``; the grace period exceeds the drain (``GRADSERVE_GRACEFUL_TIMEOUT``) plus
  the preStop sleep; every env name is a setting service/config.py reads and README's tables
  list, and the values load; the memory limit holds what the settings allow.

Under ``CI=true`` a missing ``kubernetes-validate`` or ``kubectl`` fails the test instead of
skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings, load_settings
from service.engine.limits import Limits

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
BASE_DIRS = (K8S, K8S / "kserve")
# The oldest Kubernetes these manifests claim (autoscaling/v2, policy/v1, the restricted Pod
# Security labels are all older) and the newest kubernetes-validate 1.37 ships.
K8S_VERSIONS = ("1.30", "1.37")
# YAML files here that are not Kubernetes objects applied by a kustomization.
NOT_APPLIED = {"secret.example.yaml", "prometheus-adapter/rules.yaml"}
CRD_KINDS = {("serving.kserve.io/v1beta1", "InferenceService")}
# Environment names that are not GRADSERVE_* settings, and the file that reads each.
OTHER_ENV = {"PROMETHEUS_MULTIPROC_DIR": ROOT / "gunicorn.conf.py"}
# Measured on this repository's server (docs/deploy.md, "Sizing"), MiB.
MASTER_RSS_MIB = 48
WORKER_IDLE_RSS_MIB = 65

MiB = 1 << 20


# --- tools --------------------------------------------------------------------------------------


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing (CI=true: required)", pytrace=False)
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="module")
def kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate (pip install '.[test]')")
    return kubernetes_validate


@pytest.fixture(scope="module")
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        _missing("kubectl (for `kubectl kustomize`)")
    return path


# --- reading the manifests ----------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def rel(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


def yaml_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def object_files() -> list[Path]:
    return [p for p in yaml_files()
            if p.name != "kustomization.yaml" and rel(p) != "prometheus-adapter/rules.yaml"]


@cache
def objects() -> dict[tuple[str, str, str], dict[str, Any]]:
    """(file, kind, name) -> object, for every object file."""
    out = {}
    for path in object_files():
        for doc in load_all(path):
            out[(rel(path), doc["kind"], doc["metadata"]["name"])] = doc
    return out


def one(kind: str, name: str, file: str | None = None) -> dict[str, Any]:
    found = [o for (f, k, n), o in objects().items()
             if k == kind and n == name and (file is None or f == file)]
    assert len(found) == 1, (kind, name, file, len(found))
    return found[0]


def deployment() -> dict[str, Any]:
    return one("Deployment", "gradserve")


def isvc() -> dict[str, Any]:
    return one("InferenceService", "gradserve")


def workloads() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, pod spec, main container) of gradserve's two workloads."""
    dep = deployment()["spec"]["template"]["spec"]
    pred = isvc()["spec"]["predictor"]
    return [("deployment", dep, dep["containers"][0]),
            ("inferenceservice", pred, pred["containers"][0])]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets from its ConfigMaps (envFrom) and its env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update(one("ConfigMap", ref)["data"])
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal values and ConfigMaps here"
        env[item["name"]] = item["value"]
    return env


def port_of(container: dict[str, Any], port: int | str) -> int:
    """A probe's or a Service's port (a number or the name of a container port)."""
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert named, f"no container port named {port!r}"
    return named[0]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (2, 100m, 1Gi, 256Mi) as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def prestop_sleep_s(container: dict[str, Any]) -> float:
    pre = container["lifecycle"]["preStop"]
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, command
    return float(command[1])


# --- the files and the schemas ------------------------------------------------------------------


def kustomization_resources(directory: Path) -> list[Path]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    out = []
    for entry in kust["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{rel(directory / 'kustomization.yaml')}: {entry} missing"
        out += kustomization_resources(path) if path.is_dir() else [path]
    return out


def test_every_file_is_applied_by_a_kustomization_or_said_not_to_be():
    applied = {rel(p) for d in BASE_DIRS for p in kustomization_resources(d)}
    files = {rel(p) for p in yaml_files() if p.name != "kustomization.yaml"}
    assert files - applied == NOT_APPLIED
    # The CRD-based InferenceService is in its own folder, never in the base.
    base = {rel(p) for p in kustomization_resources(K8S)}
    assert not any(load_all(K8S / f)[0]["kind"] == "InferenceService" for f in base)


def schema_validatable() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{f}:{k}/{n}", o) for (f, k, n), o in objects().items()
            if (o["apiVersion"], o["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(kv, version):
    checked = []
    for label, obj in schema_validatable():
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{label} against Kubernetes {version}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")
        checked.append(obj["kind"])
    for kind in ("Namespace", "ConfigMap", "Secret", "Deployment", "Service",
                 "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Ingress"):
        assert kind in checked, kind


def test_strict_validation_catches_a_misspelt_field(kv):
    """The check has teeth: a typo in a probe's name is an error, not an ignored field."""
    dep = load_all(K8S / "deployment.yaml")[0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(kv.ValidationError):
        kv.validate(dep, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("directory", BASE_DIRS, ids=lambda d: rel(d) or "base")
def test_kustomize_builds_and_what_it_builds_validates(kv, kubectl, directory):
    out = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(kustomization_resources(directory))
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "gradserve", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gradserve"
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            containers = doc["spec"]["predictor"]["containers"]
        else:
            for version in K8S_VERSIONS:
                kv.validate(doc, version, strict=True)
            containers = (doc.get("spec", {}).get("template", {}).get("spec", {})
                          .get("containers", []))
        for c in containers:
            assert ":" in c["image"], f"{c['image']}: no tag after kustomize's images"


# --- KServe -------------------------------------------------------------------------------------

# KServe's ComponentExtensionSpec (pkg/apis/serving/v1beta1/component.go): the predictor's keys
# that are not PodSpec fields; everything else in the predictor must be a valid PodSpec.
KSERVE_EXTENSION_KEYS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
                         "containerConcurrency", "timeout", "canaryTrafficPercent", "logger",
                         "batcher", "labels", "annotations", "deploymentStrategy"}


def test_inferenceservice_has_the_required_fields():
    obj = isvc()
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
    assert obj["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    predictor = obj["spec"]["predictor"]
    containers = predictor["containers"]
    assert len(containers) == 1 and containers[0]["name"] == "kserve-container"
    c = containers[0]
    assert c["image"]
    assert [p["containerPort"] for p in c["ports"]] == [int(container_env(c)["GRADSERVE_PORT"])]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"], probe
    # The same probes as the Deployment (only the port differs).
    dep = deployment()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        strip = lambda p: {**p, "httpGet": {**p["httpGet"], "port": None}}  # noqa: E731
        assert strip(c[probe]) == strip(dep[probe]), probe
    assert obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert predictor["minReplicas"] <= predictor["maxReplicas"]


def test_inferenceservice_predictor_is_a_valid_pod_spec(kv):
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    predictor = isvc()["spec"]["predictor"]
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_KEYS}
    for version in K8S_VERSIONS:
        folder = f"kubernetes-json-schema/v{version}.0-local-strict"
        schema = utils.schema_contents(f"{folder}/podspec-v1.json", version)
        definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
        registry = Resource.from_contents(definitions) @ (
            Resource.from_contents(schema) @ Registry())
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        errors = sorted(validator.iter_errors(pod), key=lambda e: list(e.path))
        assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]


# --- the app: probes, ports, drain --------------------------------------------------------------


@pytest.fixture(scope="module")
def app():
    from service import create_app
    from service.store.memory import MemoryStore

    return create_app(load_settings(env={}), store=MemoryStore())


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_probe_paths_are_routes_of_the_app_and_answer_200(app, which):
    _, _, c = next(w for w in workloads() if w[0] == which)
    probes = {name: c[name]["httpGet"]["path"]
              for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes == {"startupProbe": "/healthz", "readinessProbe": "/readyz",
                      "livenessProbe": "/healthz"}
    routes = {rule.rule for rule in app.url_map.iter_rules() if "GET" in rule.methods}
    client = app.test_client()
    for name, path in probes.items():
        assert path in routes, f"{which} {name}: {path} is not a route of the app"
        resp = client.get(path)
        assert resp.status_code == 200, (name, path, resp.get_data(as_text=True))


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_ports_are_the_containers_gradserve_port(which):
    _, pod, c = next(w for w in workloads() if w[0] == which)
    env = container_env(c)
    port = int(env["GRADSERVE_PORT"])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert port_of(c, c[name]["httpGet"]["port"]) == port, name
    annotations = (deployment()["spec"]["template"]["metadata"]["annotations"]
                   if which == "deployment" else isvc()["spec"]["predictor"]["annotations"])
    assert int(annotations["prometheus.io/port"]) == port
    assert env["GRADSERVE_HOST"] == "0.0.0.0"


def test_service_ingress_and_network_policy_use_the_container_port():
    _, _, c = workloads()[0]
    svc = one("Service", "gradserve")
    (svc_port,) = svc["spec"]["ports"]
    assert port_of(c, svc_port["targetPort"]) == int(container_env(c)["GRADSERVE_PORT"])
    backend = one("Ingress", "gradserve")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "gradserve"
    assert backend["service"]["port"]["name"] == svc_port["name"]
    policy = one("NetworkPolicy", "gradserve")
    for rule in policy["spec"]["ingress"]:
        assert [port_of(c, p["port"]) for p in rule["ports"]] == [port_of(c, "http")]


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_grace_period_exceeds_the_drain_and_the_prestop_sleep(which):
    _, pod, c = next(w for w in workloads() if w[0] == which)
    env = container_env(c)
    drain = float(env.get("GRADSERVE_GRACEFUL_TIMEOUT", Settings().graceful_timeout))
    sleep = prestop_sleep_s(c)
    assert sleep >= 5, "give the endpoints and the ingress time to drop the pod"
    assert pod["terminationGracePeriodSeconds"] > drain + sleep
    # gunicorn drains for exactly that setting.
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert re.search(r"^graceful_timeout = _settings\.graceful_timeout$", conf, re.M)


# --- settings -----------------------------------------------------------------------------------


def settings_names() -> set[str]:
    names = {f.name for f in fields(Settings) if f.name != "limits"}
    names |= {f.name for f in fields(Limits)}
    return {"GRADSERVE_" + n.upper() for n in names}


def readme_table_names() -> set[str]:
    """``GRADSERVE_*`` names in the first column of README's tables (``_JITTER`` after
    ``GRADSERVE_MAX_REQUESTS`` is ``GRADSERVE_MAX_REQUESTS_JITTER``)."""
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        last = ""
        for token in re.findall(r"`([A-Z0-9_]+)`", line.split("|")[1]):
            if token.startswith("_") and last:
                names.add(last + token)
            elif token.startswith("GRADSERVE_"):
                names.add(token)
                last = token
    return names


def all_env() -> list[tuple[str, str, str]]:
    """(where, name, value) of every ConfigMap entry and container env of gradserve."""
    out = []
    for (f, kind, name), obj in objects().items():
        if kind == "ConfigMap":
            out += [(f"{f}:{name}", k, v) for k, v in obj["data"].items()]
    for which, _, c in workloads():
        out += [(which, e["name"], e.get("value", "")) for e in c.get("env", [])]
    return out


def test_every_env_name_is_a_setting_in_the_readme_table():
    known, documented = settings_names(), readme_table_names()
    assert "GRADSERVE_MAX_REQUESTS_JITTER" in documented  # the parser reads the table
    for where, name, _ in all_env():
        if name.startswith("GRADSERVE_"):
            assert name in known, f"{where}: {name} is not read by service/config.py"
            assert name in documented, f"{where}: {name} is not in README's tables"
        else:
            assert name in OTHER_ENV, f"{where}: {name}"
            assert name in OTHER_ENV[name].read_text(encoding="utf-8"), name


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_the_settings_load(tmp_path, which):
    _, _, c = next(w for w in workloads() if w[0] == which)
    env = container_env(c)
    # The key file is the Secret's mount; a stand-in here (an unreadable one stops start-up).
    keys = tmp_path / "api-keys"
    keys.write_text("k1\n")
    env["GRADSERVE_API_KEYS_FILE"] = str(keys)
    settings = load_settings(env=env)
    assert settings.redis_url.startswith("redis://redis:6379/")
    assert settings.all_api_keys == ("k1",)


def test_the_api_key_file_is_the_secrets_mount():
    example = one("Secret", "gradserve-api-keys")
    (key,) = example["stringData"]
    for which, pod, c in workloads():
        env = container_env(c)
        assert "GRADSERVE_API_KEYS" not in env, "keys come from the Secret, never the env"
        volume = next(v for v in pod["volumes"] if "secret" in v)
        assert volume["secret"]["secretName"] == example["metadata"]["name"]
        assert not volume["secret"].get("optional", False), "no Secret must mean no pod"
        mount = next(m for m in c["volumeMounts"] if m["name"] == volume["name"])
        assert mount["readOnly"]
        assert env["GRADSERVE_API_KEYS_FILE"] == f"{mount['mountPath']}/{key}", which


def test_the_kserve_settings_are_the_bases_on_another_port():
    base = dict(one("ConfigMap", "gradserve")["data"])
    kserve = dict(one("ConfigMap", "gradserve-kserve")["data"])
    assert base.pop("GRADSERVE_PORT") == "8000" and kserve.pop("GRADSERVE_PORT") == "8080"
    assert base == kserve


# --- security, writable paths, resources ---------------------------------------------------------


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_non_root_read_only_root_and_writable_paths_for_what_gunicorn_writes(which):
    _, pod, c = next(w for w in workloads() if w[0] == which)
    sc, csc = pod["securityContext"], c["securityContext"]
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    uid = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)[-1]
    assert (str(sc["runAsUser"]), str(sc["runAsGroup"])) == uid
    assert sc["runAsNonRoot"] and csc["runAsNonRoot"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # A Service named gradserve would otherwise set GRADSERVE_PORT=tcp://... in the pod.
    assert pod["enableServiceLinks"] is False

    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in c["volumeMounts"]
                if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]}
    env = container_env(c)

    def covered(path: str) -> bool:
        return any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable)

    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert 'worker_tmp_dir = "/dev/shm"' in conf  # the heartbeat files
    needed = {"/dev/shm", env["PROMETHEUS_MULTIPROC_DIR"], env["GRADSERVE_DATA_DIR"],
              "/tmp"}  # tempfile's directory (gunicorn.conf.py makes one without the variable)
    for path in needed:
        assert covered(path), f"{which}: {path} is not on a writable emptyDir"
    shm = next(m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"


def worst_case_pod_bytes(env: dict[str, str]) -> float:
    """The memory the settings let one pod reach (docs/deploy.md, "Sizing"): per worker, the
    idle process, a full plan cache, every compute slot at the per-request limits (its
    values, its body and its encoded answer) and a body waiting in every other thread."""
    s = load_settings(env={k: v for k, v in env.items() if k != "GRADSERVE_API_KEYS_FILE"})
    per_slot = s.limits.max_memory_bytes + s.max_body_bytes + s.max_response_bytes
    waiting = max(0, s.threads - s.max_inflight) * s.max_body_bytes
    worker = (WORKER_IDLE_RSS_MIB * MiB + s.limits.plan_cache_bytes
              + s.max_inflight * per_slot + waiting)
    return MASTER_RSS_MIB * MiB + s.workers * worker


@pytest.mark.parametrize("which", ["deployment", "inferenceservice"])
def test_resources_hold_what_the_settings_allow(which):
    _, _, c = next(w for w in workloads() if w[0] == which)
    env = container_env(c)
    res = c["resources"]
    workers, blas = int(env["GRADSERVE_WORKERS"]), int(env["GRADSERVE_BLAS_THREADS"])
    assert workers >= 1, "0 would mean one per CPU of the node, not of the pod"
    assert quantity(res["limits"]["cpu"]) == workers * blas
    assert quantity(res["requests"]["cpu"]) == quantity(res["limits"]["cpu"])
    limit, request = quantity(res["limits"]["memory"]), quantity(res["requests"]["memory"])
    idle = MASTER_RSS_MIB * MiB + workers * WORKER_IDLE_RSS_MIB * MiB
    assert idle < request <= limit
    worst = worst_case_pod_bytes(env)
    assert worst <= limit, f"{worst / MiB:.0f} MiB possible, limit {limit / MiB:.0f} MiB"


# --- rollout, disruption, scaling ----------------------------------------------------------------


def test_rolling_update_pdb_service_and_hpa_select_the_pods():
    dep = deployment()
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    rolling = dep["spec"]["strategy"]["rollingUpdate"]
    assert (dep["spec"]["strategy"]["type"], rolling["maxUnavailable"], rolling["maxSurge"]) == \
        ("RollingUpdate", 0, 1)
    assert isvc()["spec"]["predictor"]["deploymentStrategy"] == dep["spec"]["strategy"]
    pdb = one("PodDisruptionBudget", "gradserve")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service", "gradserve")
    assert svc["spec"]["selector"].items() <= labels.items()
    # The KServe predictor's pods must not join the base Service.
    pred_labels = isvc()["spec"]["predictor"]["labels"]
    assert not svc["spec"]["selector"].items() <= pred_labels.items()
    hpa = one("HorizontalPodAutoscaler", "gradserve")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_the_hpa_scales_on_the_in_flight_gauge_below_the_pods_capacity():
    from service.runtime.metrics import INFLIGHT

    gauge = INFLIGHT.describe()[0].name
    hpa = one("HorizontalPodAutoscaler", "gradserve")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    rules = yaml.safe_load((K8S / "prometheus-adapter" / "rules.yaml").read_text())["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert re.match(rf"^{gauge}\{{", rule["seriesQuery"]), rule["seriesQuery"]
    assert re.fullmatch(rule["name"]["matches"], gauge)
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    env = container_env(deployment()["spec"]["template"]["spec"]["containers"][0])
    slots = int(env["GRADSERVE_WORKERS"]) * int(env["GRADSERVE_MAX_INFLIGHT"])
    target = quantity(metric["pods"]["target"]["averageValue"])
    # The gauge saturates at the slots: a target at or above them would never scale up.
    assert 0 < target < slots


# --- Redis, network policies, the ingress ---------------------------------------------------------


def test_redis_is_a_cache_without_persistence():
    redis = one("Deployment", "redis")["spec"]["template"]["spec"]
    args = redis["containers"][0]["args"]
    pairs = dict(zip(args[1::2], args[2::2]))
    assert args[0] == "redis-server"
    assert pairs["--save"] == "" and pairs["--appendonly"] == "no"
    settings = load_settings(env=one("ConfigMap", "gradserve")["data"])
    assert settings.redis_url.startswith("redis://redis:6379/")
    svc = one("Service", "redis")
    assert svc["spec"]["ports"][0]["port"] == 6379
    csc = redis["containers"][0]["securityContext"]
    assert csc["readOnlyRootFilesystem"] and redis["securityContext"]["runAsNonRoot"]


def test_network_policies_let_only_the_proxy_in_and_only_redis_and_dns_out():
    gs = one("NetworkPolicy", "gradserve")["spec"]
    assert set(gs["policyTypes"]) == {"Ingress", "Egress"}
    sources = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
               for rule in gs["ingress"] for peer in rule["from"]]
    assert sources == ["ingress-nginx", "prometheus"]
    egress = {(tuple(sorted(peer["podSelector"]["matchLabels"].items())),
               tuple(sorted((p["port"], p["protocol"]) for p in rule["ports"])))
              for rule in gs["egress"] for peer in rule["to"]}
    assert egress == {((("app.kubernetes.io/name", "redis"),), ((6379, "TCP"),)),
                      ((("k8s-app", "kube-dns"),), ((53, "TCP"), (53, "UDP")))}
    rd = one("NetworkPolicy", "redis")["spec"]
    assert rd["egress"] == [] and set(rd["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = rd["ingress"]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == \
        [{"app.kubernetes.io/name": "gradserve"}]
    for which, pod, c in workloads():
        labels = (deployment()["spec"]["template"]["metadata"]["labels"]
                  if which == "deployment" else isvc()["spec"]["predictor"]["labels"])
        assert labels["app.kubernetes.io/name"] == "gradserve", which


def test_the_ingress_does_what_deploy_nginx_conf_does():
    ann = one("Ingress", "gradserve")["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    conf = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    body = re.search(r"client_max_body_size (\d+)m;", conf).group(1)
    assert ann[prefix + "proxy-body-size"] == f"{body}m"
    assert int(body) * MiB == Settings().max_body_bytes
    assert ann[prefix + "proxy-request-buffering"] == "on"
    assert float(ann[prefix + "proxy-read-timeout"]) > Settings().request_deadline_s
    retry = ann[prefix + "proxy-next-upstream"].split()
    assert {"error", "timeout", "http_503", "non_idempotent"} <= set(retry)
