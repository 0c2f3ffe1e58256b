"""deploy/ stays consistent with the code and hardened: valid YAML, real commands, real probe routes,
real settings names, the pod security the checker asks for, and the checker itself (checkov) run on
every test run with an explicit list of exceptions."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import redis
import yaml
from aiohttp import web

from call_ledger.app import create_app
from call_ledger.cli import parser
from call_ledger.settings import Settings
from call_ledger.web.metrics import Metrics
from tests.support.cluster import cluster_port, wait_ping
from tests.support.redis_server import free_port, require_redis
from tests.support.settings import make_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "call-ledger"
UID = 10001


# Checkov findings that are deliberate: skipped in the manifests themselves, with checkov's own
# annotation (`checkov.io/skipN: ID=reason` on the Deployment), and explained in deploy/README.md
# ("Documented exceptions"). Keyed by check and resource: the same check on a new object is a new finding.
CHECKOV_SKIPS = {
    # Image should use digest: ours exists only once CI pushed it; the pipeline pins it at apply time.
    ("CKV_K8S_43", "Deployment.call-ledger.call-ledger-api"),
    ("CKV_K8S_43", "Deployment.call-ledger.call-ledger-worker"),
    # Secrets as files rather than environment variables: the app reads LEDGER_* variables only.
    ("CKV_K8S_35", "Deployment.call-ledger.call-ledger-api"),
    ("CKV_K8S_35", "Deployment.call-ledger.call-ledger-worker"),
}
API_CLIENT_LABEL = {"call-ledger.io/api-client": "true"}
WEBHOOK_INGRESS_LABEL = {"call-ledger.io/webhook-ingress": "true"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}  # the label Kubernetes gives every namespace
METRICS_PORT = 9090


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _objects(kind: str | None = None) -> list[dict[str, Any]]:
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in _docs(path)]
    return [doc for doc in docs if kind is None or doc["kind"] == kind]


def _deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in _objects("Deployment")}


def _setting_names() -> set[str]:
    return {f"LEDGER_{name.upper()}" for name in Settings.model_fields}


def _version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _served_paths() -> set[str]:
    return {route.resource.canonical for route in create_app(make_settings(), "serve").router.routes()}


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


# --- Kubernetes --------------------------------------------------------------------------------------

def test_kubernetes_deployments_run_real_commands_with_real_probes() -> None:
    served = _served_paths()
    deployments = list(_deployments().values())
    assert {d["metadata"]["name"] for d in deployments} == {"call-ledger-worker", "call-ledger-api"}
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        parser().parse_args(container["args"])  # exits on an unknown command
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/readyz", "/healthz"} <= served
        ports = {port["name"] for port in container["ports"]}
        assert container["readinessProbe"]["httpGet"]["port"] in ports
        assert container["livenessProbe"]["httpGet"]["port"] in ports


# The oldest Kubernetes the manifests are meant for (HPA autoscaling/v2, PDB policy/v1 and Pod Security
# Admission labels are all GA there), and the newest the schemas package knows.
@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    for obj in _objects():
        try:  # strict: an unknown (misspelt) field is an error, as `kubectl apply --validate=strict` says
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} against {version}: {error.message}")


def test_every_object_lives_in_the_dedicated_namespace() -> None:
    namespaces = _objects("Namespace")
    assert [ns["metadata"]["name"] for ns in namespaces] == [NAMESPACE]
    for obj in _objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, (obj["kind"], obj["metadata"]["name"])


def test_pods_are_hardened_and_bounded() -> None:
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert dockerfile_user and dockerfile_user.groups() == (str(UID), str(UID))
    for name, deployment in _deployments().items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID  # the image's user
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (container,) = pod["containers"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["runAsNonRoot"] is True and security["runAsUser"] == UID
        # /tmp stays writable on the read-only root filesystem, bounded.
        volumes = {v["name"]: v for v in pod["volumes"]}
        tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
        assert "sizeLimit" in volumes[tmp["name"]]["emptyDir"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)
        # The release tag, never `latest`; Always so a re-pushed tag is not run stale.
        image, _, tag = container["image"].partition(":")
        assert image == "call-ledger" and tag == _version()
        assert container["imagePullPolicy"] == "Always"
        assert pod["terminationGracePeriodSeconds"] > 10  # above LEDGER_SHUTDOWN_GRACE_S


def test_environment_names_are_real_settings_and_secrets_go_to_the_role_that_uses_them() -> None:
    names = _setting_names()
    (config,) = _objects("ConfigMap")
    assert set(config["data"]) <= names
    (secret,) = _objects("Secret")
    assert set(secret["stringData"]) <= names
    secret_keys: dict[str, set[str]] = {}
    for name, deployment in _deployments().items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        secret_keys[name] = set()
        for variable in container["env"]:
            assert variable["name"] in names, variable["name"]
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] == variable["name"]
                # A required key must be in the example Secret, or the pod never starts.
                assert ref.get("optional") or ref["key"] in secret["stringData"], ref["key"]
                secret_keys[name].add(ref["key"])
    # Least privilege: the read API holds no webhook secret, the worker no API token.
    assert secret_keys["call-ledger-api"] == {"LEDGER_REDIS_URL", "LEDGER_API_TOKENS"}
    assert "LEDGER_API_TOKENS" not in secret_keys["call-ledger-worker"]
    assert {"LEDGER_REDIS_URL", "LEDGER_PLATFORM_WEBHOOK_SECRET"} <= secret_keys["call-ledger-worker"]


def test_each_deployment_has_a_disruption_budget_a_network_policy_and_a_service() -> None:
    budgets, policies, services = _objects("PodDisruptionBudget"), _objects("NetworkPolicy"), _objects("Service")
    for name, deployment in _deployments().items():
        labels = _pod_labels(deployment)
        (budget,) = [b for b in budgets if _selects(b["spec"]["selector"], labels)]
        # A drain may take one pod at a time; with minReplicas >= 2 some pod always serves.
        assert budget["spec"]["maxUnavailable"] == 1
        (policy,) = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        allowed = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
        assert allowed == {port["containerPort"] for port in container["ports"]}, name
        assert [s for s in services if all(labels.get(k) == v for k, v in s["spec"]["selector"].items())], name


def _admitted(policy: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Port -> the `from` peers admitted to it (a rule without `from` would admit everyone: refused)."""
    admitted: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits every source"
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            admitted.setdefault(port["port"], []).extend(rule["from"])
    return admitted


@pytest.mark.parametrize(("role", "clients"), [("api", API_CLIENT_LABEL), ("worker", WEBHOOK_INGRESS_LABEL)])
def test_network_policies_admit_the_service_port_from_labelled_namespaces_and_metrics_from_monitoring(
        role: str, clients: dict[str, str]) -> None:
    (policy,) = [p for p in _objects("NetworkPolicy") if p["metadata"]["name"] == f"call-ledger-{role}"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # Only namespace selectors with exact labels: no podSelector-only peer (that is every pod of the
    # namespace), no ipBlock, no empty selector (every namespace).
    assert _admitted(policy) == {8080: [{"namespaceSelector": {"matchLabels": clients}}],
                                 METRICS_PORT: [{"namespaceSelector": {"matchLabels": MONITORING}}]}
    deployment = _deployments()[f"call-ledger-{role}"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8080, "metrics": METRICS_PORT}
    # The app serves /metrics on that port, and only there (a NetworkPolicy cannot tell paths apart).
    (config,) = _objects("ConfigMap")
    assert int(config["data"]["LEDGER_METRICS_PORT"]) == METRICS_PORT
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)


def test_metrics_have_a_port_of_their_own_when_asked() -> None:
    """LEDGER_METRICS_PORT: /metrics there and nowhere else; the service port keeps everything else."""
    from tests.support.service import start_service, stop

    metrics_port = free_port()
    proc = start_service("api", LEDGER_METRICS_PORT=str(metrics_port))
    port = proc.port
    try:
        def get(port: int, path: str) -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                    body = response.read()
                    assert path != "/metrics" or b"ledger_http_request_duration_seconds" in body
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert (get(metrics_port, "/metrics"), get(port, "/metrics")) == (200, 404)
        assert (get(port, "/healthz"), get(metrics_port, "/healthz"), get(metrics_port, "/api/v1/calls")) == (
            200, 404, 404)
    finally:
        code, _, _ = stop(proc)
    assert code == 0


def test_the_redis_url_comes_from_the_secret_and_is_rediss_with_an_acl_user() -> None:
    (secret,) = _objects("Secret")
    for name, deployment in _deployments().items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        (variable,) = [v for v in container["env"] if v["name"] == "LEDGER_REDIS_URL"]
        assert variable == {"name": "LEDGER_REDIS_URL", "valueFrom": {"secretKeyRef": {
            "name": secret["metadata"]["name"], "key": "LEDGER_REDIS_URL"}}}, name
        # The CA of a private Redis is mounted read-only where the example URL points.
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert mounts["redis-ca"]["readOnly"] is True
        assert volumes["redis-ca"]["configMap"] == {"name": "call-ledger-redis-ca", "optional": True}
    # No manifest but the example Secret mentions a Redis URL; the example's is TLS, an ACL user and a
    # placeholder for the password, and it names the CA where the pods mount it.
    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    for obj in _objects():
        if obj["kind"] != "Secret":
            assert not [text for text in strings(obj) if re.search(r"rediss?://", text)], obj["metadata"]["name"]
    example = urlsplit(secret["stringData"]["LEDGER_REDIS_URL"])
    assert (example.scheme, example.username, example.password) == ("rediss", "ledger", "<password>")
    assert example.query == "ssl_ca_certs=/etc/call-ledger/redis-ca/ca.crt"
    (container, *_) = _deployments()["call-ledger-api"]["spec"]["template"]["spec"]["containers"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "redis-ca")
    assert example.query.removeprefix("ssl_ca_certs=").startswith(mount + "/")


def _hpa(deployment: str) -> dict[str, Any]:
    (hpa,) = [h for h in _objects("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == deployment]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["minReplicas"] >= 2  # one pod evicted within the PDB leaves one serving
    return hpa


def test_the_api_scales_on_cpu() -> None:
    metrics = _hpa("call-ledger-api")["spec"]["metrics"]
    assert [(m["type"], m["resource"]["name"]) for m in metrics] == [("Resource", "cpu")]
    # CPU utilization is relative to the request: there must be one.
    container = _deployments()["call-ledger-api"]["spec"]["template"]["spec"]["containers"][0]
    assert "cpu" in container["resources"]["requests"]


def test_workers_scale_on_the_consumer_lag_the_app_exports_through_the_adapter_rule() -> None:
    metrics = _hpa("call-ledger-worker")["spec"]["metrics"]
    (external,) = [m["external"] for m in metrics if m["type"] == "External"]
    name = external["metric"]["name"]
    # The app exports it (every process, the same group-wide value read from Redis)...
    assert name in {metric.name for metric in Metrics().registry.collect()}
    # ...so the target is a total divided among workers, never a per-pod average of equal values.
    assert external["target"]["type"] == "AverageValue" and int(external["target"]["averageValue"]) > 0
    # The adapter serves it under that name, scoped by namespace, counted once across pods.
    (rule,) = yaml.safe_load((DEPLOY / "prometheus-adapter" / "values.yaml").read_text())["rules"]["external"]
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    assert rule["metricsQuery"] == "max(<<.Series>>{<<.LabelMatchers>>})"


# --- compose -----------------------------------------------------------------------------------------

REDIS_PASSWORD = "0f3c9a1e5b7d2c4a6e8f0b1d3c5a7e9f"  # what `openssl rand -hex 16` gives: URL-safe
REQUIRED_PASSWORD = "${LEDGER_REDIS_PASSWORD:?set LEDGER_REDIS_PASSWORD}"


def _interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's `${NAME:-default}` and `${NAME:?message}` (refused when NAME is unset or empty)."""
    for match in re.finditer(r"\$\{(\w+)(?::([-?])([^}]*))?\}", value):
        name, kind, text = match.groups()
        if kind == "?":
            assert shell.get(name), f"compose refuses to start: {text}"
        value = value.replace(match.group(0), shell.get(name) or (text if kind == "-" else "") or "")
    assert "$" not in value.replace("$$", ""), f"unsupported interpolation in {value}"
    return value.replace("$$", "$")


def _compose_environment(environment: dict[str, Any], shell: dict[str, str]) -> dict[str, str]:
    """What compose puts in the container: `NAME:` with no value passes NAME through only when the
    shell sets it; `${NAME:-default}` and `${NAME:?message}` are interpolated."""
    resolved = {}
    for name, value in environment.items():
        if value is None:
            if name in shell:
                resolved[name] = shell[name]
            continue
        resolved[name] = _interpolate(str(value), shell)
    return resolved


@pytest.mark.parametrize("compose_file", ["compose.yaml", "compose.cluster.yaml"])
def test_compose_starts_with_only_the_redis_password_in_the_shell(
        compose_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every variable is a real setting, and an operator who set no provider secret gets valid
    settings (an empty LEDGER_PLATFORM_WEBHOOK_SECRET would stop start-up); the Redis password is
    the one thing the shell must give."""
    services = yaml.safe_load((DEPLOY / compose_file).read_text())["services"]
    for role in ("worker", "api"):
        with pytest.raises(AssertionError, match="compose refuses to start: set LEDGER_REDIS_PASSWORD"):
            _compose_environment(services[role]["environment"], shell={})
        environment = _compose_environment(services[role]["environment"],
                                           shell={"LEDGER_REDIS_PASSWORD": REDIS_PASSWORD})
        assert urlsplit(environment["LEDGER_REDIS_URL"]).password == REDIS_PASSWORD
        assert set(environment) <= _setting_names()
        for name in list(os.environ):
            if name.startswith("LEDGER_"):
                monkeypatch.delenv(name)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        Settings()  # raises on an invalid value


def test_compose_runs_redis_with_aof_a_password_and_both_roles() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    redis_command = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_command and redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert _option(redis_command, "--requirepass") == REQUIRED_PASSWORD
    assert compose["services"]["redis"]["environment"] == {"REDISCLI_AUTH": REQUIRED_PASSWORD}  # healthcheck
    assert compose["services"]["worker"]["environment"]["LEDGER_REDIS_URL"] == (
        f"redis://:{REQUIRED_PASSWORD}@redis:6379/0")
    for role in ("worker", "api"):
        parser().parse_args(compose["services"][role]["command"])
        assert compose["services"][role]["environment"]["LEDGER_REDIS_URL"].startswith("redis://")
        assert compose["services"][role]["read_only"] is True and compose["services"][role]["cap_drop"] == ["ALL"]


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def _cluster() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.cluster.yaml").read_text())["services"])


def _cluster_nodes() -> dict[str, list[str]]:
    return {name: service["command"] for name, service in _cluster().items()
            if service.get("command", [""])[0] == "redis-server"}


def _init_script() -> str:
    (script,) = _cluster()["redis-cluster-init"]["command"]
    assert _cluster()["redis-cluster-init"]["entrypoint"] == ["sh", "-c"]
    # A single $ would be interpolated by compose (to "" for an unset name): every one is doubled.
    assert not re.search(r"(?<!\$)\$(?!\$)", script.replace("$$", "")), "unescaped $ in the init script"
    return str(script).replace("$$", "$")


def test_cluster_compose_has_six_aof_nodes_and_a_one_shot_init_with_one_replica_each() -> None:
    nodes = _cluster_nodes()
    assert len(nodes) == 6
    for name, command in nodes.items():
        assert _option(command, "--requirepass") == _option(command, "--masterauth") == REQUIRED_PASSWORD
        assert _cluster()[name]["environment"] == {"REDISCLI_AUTH": REQUIRED_PASSWORD}
        assert _option(command, "--cluster-enabled") == "yes"
        assert _option(command, "--appendonly") == "yes"
        assert _option(command, "--appendfsync") == "always"
        assert _option(command, "--cluster-announce-hostname") == name
    init = _cluster()["redis-cluster-init"]
    assert init["restart"] == "no"
    assert init["environment"] == {"REDISCLI_AUTH": REQUIRED_PASSWORD}
    conditions = {name: dep["condition"] for name, dep in init["depends_on"].items()}
    assert conditions == dict.fromkeys(nodes, "service_healthy")
    script = _init_script()
    create = next(line.split() for line in script.splitlines() if "--cluster create" in line)
    assert _option(create, "--cluster-replicas") == "1" and "--cluster-yes" in create
    loop = re.search(r"^\s*for host in ([^;]*); do$", script, re.M)
    assert loop and loop.group(1).split() == list(nodes)
    subprocess.run(["sh", "-n", "-c", script], check=True)  # the shell can parse it


def test_cluster_compose_roles_use_the_cluster_through_several_nodes() -> None:
    services, nodes = _cluster(), _cluster_nodes()
    for role in ("worker", "api"):
        service = services[role]
        parser().parse_args(service["command"])
        assert service["environment"]["LEDGER_REDIS_CLUSTER"] == "true"
        environment = _compose_environment(service["environment"], shell={"LEDGER_REDIS_PASSWORD": REDIS_PASSWORD})
        urls = environment["LEDGER_REDIS_URL"].split(",")
        assert len(urls) > 1
        for i, url in enumerate(urls):
            parts = urlsplit(url)
            assert parts.scheme == "redis" and parts.hostname in nodes and parts.port == 6379
            assert parts.password == (REDIS_PASSWORD if i == 0 else None)  # the first node's applies to all
        assert service["depends_on"] == {"redis-cluster-init": {"condition": "service_completed_successfully"}}


@pytest.fixture
def cluster_from_compose() -> Iterator[list[int]]:
    """The compose file's six node commands, run by the local redis-server (ports and data directory
    changed only), made a cluster by the init script's own `redis-cli --cluster create` line."""
    require_redis()
    nodes = _cluster_nodes()
    with tempfile.TemporaryDirectory() as directory:
        ports = [cluster_port() for _ in nodes]
        procs = []
        for port, command in zip(ports, nodes.values(), strict=True):
            command = [_interpolate(part, {"LEDGER_REDIS_PASSWORD": REDIS_PASSWORD}) for part in command]
            command[command.index("--port") + 1] = str(port)
            node_dir = Path(directory) / str(port)  # each container has its own /data
            node_dir.mkdir()
            procs.append(subprocess.Popen([*command, "--bind", "127.0.0.1", "--dir", str(node_dir)],
                                          stdout=subprocess.DEVNULL))
        try:
            for port in ports:
                wait_ping(port, password=REDIS_PASSWORD)  # a node started with the compose file's own command
            create = next(line.split() for line in _init_script().splitlines() if "--cluster create" in line)
            addresses = [f"127.0.0.1:{port}" for port in ports]
            create = [part for part in create if part != "$nodes"]
            create[create.index("create") + 1:create.index("create") + 1] = addresses
            subprocess.run(create, check=True, stdout=subprocess.DEVNULL, timeout=60,
                           env={**os.environ, "REDISCLI_AUTH": REDIS_PASSWORD})  # as the init container has it
            yield ports
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


@pytest.mark.real_redis
def test_cluster_compose_node_commands_form_three_masters_with_one_replica_each(
        cluster_from_compose: list[int]) -> None:
    client = redis.Redis(host="127.0.0.1", port=cluster_from_compose[0], password=REDIS_PASSWORD,
                         decode_responses=True)
    with pytest.raises(redis.AuthenticationError):  # the password is required
        redis.Redis(host="127.0.0.1", port=cluster_from_compose[0]).ping()
    deadline = time.monotonic() + 20
    while True:
        nodes = [line.split() for line in client.execute_command("CLUSTER", "NODES").splitlines()]
        masters = [n for n in nodes if "master" in n[2]]
        replicas = [n for n in nodes if "slave" in n[2]]
        ok = client.cluster("info").get("cluster_state") == "ok"
        if ok and len(masters) == 3 and len(replicas) == 3 and all(n[7] == "connected" for n in nodes):
            break
        assert time.monotonic() < deadline, "the cluster did not form with 3 masters + 3 replicas"
        time.sleep(0.1)
    assert sorted(r[3] for r in replicas) == sorted(m[0] for m in masters)  # one replica per master
    # Nodes announce their compose hostname (clients are redirected by name, not by container IP).
    assert {n[1].split(",")[1] for n in nodes} <= set(_cluster_nodes())
    assert client.config_get("appendonly") == {"appendonly": "yes"}


# --- Dockerfile and its HEALTHCHECK --------------------------------------------------------------------

def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["call-ledger"]' in dockerfile
    for package in ("call_ledger", "worker", "api"):
        assert f"COPY {package} {package}" in dockerfile


def test_dockerfile_is_pinned_non_root_healthchecked_and_holds_no_secret() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(bases) == 2 and len(set(bases)) == 1
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+@sha256:[0-9a-f]{64}", bases[0]), bases[0]
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert "COPY deploy/healthcheck.py /usr/local/lib/call-ledger/healthcheck.py" in dockerfile
    assert re.search(r'^HEALTHCHECK .*\\\n\s+CMD \["python", "-I", "/usr/local/lib/call-ledger/healthcheck.py"\]',
                     dockerfile, re.M)
    for line in re.findall(r"^(?:ENV|ARG)\b.*(?:\n\s+.*)*", dockerfile, re.M):
        assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY", line), line


async def _healthcheck(port: int) -> int:
    env = {"PATH": os.environ.get("PATH", ""), "LEDGER_HOST": "0.0.0.0", "LEDGER_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-I", str(DEPLOY / "healthcheck.py"), env=env)
    return await asyncio.wait_for(proc.wait(), 10)


async def test_healthcheck_passes_on_a_live_process_and_fails_otherwise(aiohttp_server: Any) -> None:
    live = await aiohttp_server(create_app(make_settings(), "api", run_consumer=False))
    assert await _healthcheck(live.port) == 0

    async def unhealthy(request: web.Request) -> web.Response:
        return web.Response(status=503)

    broken = web.Application()
    broken.router.add_get("/healthz", unhealthy)
    assert await _healthcheck((await aiohttp_server(broken)).port) == 1
    port = live.port
    await live.close()
    assert await _healthcheck(port) == 1  # nothing listening


# --- checkov ---------------------------------------------------------------------------------------------

def _checkov() -> str:
    """LEDGER_CHECKOV, else the venv .ci/run makes (.venv/checkov), else PATH. Missing: a skip that
    says how to get it, or a failure with LEDGER_REQUIRE_CHECKOV=1 (CI sets it), so CI never
    passes without having run the checker."""
    candidates = [os.environ.get("LEDGER_CHECKOV"), str(ROOT / ".venv" / "checkov" / "bin" / "checkov"),
                  shutil.which("checkov")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = ("checkov not found: set LEDGER_CHECKOV, or run: python3 -m venv .venv/checkov && "
               ".venv/checkov/bin/pip install -r deploy/checkov-requirements.txt (see deploy/README.md)")
    if os.environ.get("LEDGER_REQUIRE_CHECKOV") == "1":
        pytest.fail(message)
    pytest.skip(message + "; LEDGER_REQUIRE_CHECKOV=1 makes this a failure")


def test_checkov_finds_nothing_and_skips_only_the_documented_exceptions() -> None:
    result = subprocess.run(
        # Not --quiet: it would leave the skipped checks out of the report.
        [_checkov(), "-d", str(DEPLOY), "--compact", "-o", "json",
         "--skip-download"],  # no calls to the vendor's API: results depend on the files only
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {report["check_type"]: report for report in reports}
    # The checker really read the manifests and the Dockerfile (a parse failure is not a pass).
    assert {"kubernetes", "dockerfile"} <= set(by_type), set(by_type)
    assert by_type["kubernetes"]["summary"]["resource_count"] >= len(_objects()) - 1
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["check_type"]
    failed = {(check["check_id"], check["resource"]) for report in reports
              for check in report["results"]["failed_checks"]}
    assert not failed, f"fix these, or skip them in the manifest with the reason and in deploy/README.md: {failed}"
    assert sum(report["summary"]["failed"] for report in reports) == 0
    skipped = {(check["check_id"], check["resource"]): check["check_result"].get("suppress_comment", "")
               for report in reports for check in report["results"]["skipped_checks"]}
    # Exactly the deliberate exceptions, each with its reason: a skip added quietly fails here.
    assert set(skipped) == CHECKOV_SKIPS, set(skipped) ^ CHECKOV_SKIPS
    for key, reason in skipped.items():
        assert len(reason) > 40 and reason != "No comment provided", key
    readme = (DEPLOY / "README.md").read_text()
    for check_id, _ in CHECKOV_SKIPS:
        assert f"`{check_id}`" in readme, f"{check_id} is not documented in deploy/README.md"
