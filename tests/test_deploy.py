"""deploy/ stays consistent with the code: valid YAML, real commands, real probe routes."""

from pathlib import Path

import yaml

from ledger.app import create_app
from ledger.cli import parser
from tests.conftest import make_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _served_paths() -> set[str]:
    return {route.resource.canonical for route in create_app(make_settings(), "serve").router.routes()}


def test_kubernetes_deployments_run_real_commands_with_real_probes() -> None:
    served = _served_paths()
    deployments = [doc for path in (DEPLOY / "k8s").glob("*.yaml") for doc in yaml.safe_load_all(path.read_text())
                   if doc and doc["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {"call-ledger-worker", "call-ledger-api"}
    for deployment in deployments:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        parser().parse_args(container["args"])  # exits on an unknown command
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/readyz", "/healthz"} <= served


def test_compose_runs_redis_with_aof_and_both_roles() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    redis_command = compose["services"]["redis"]["command"]
    assert "--appendonly" in redis_command and redis_command[redis_command.index("--appendonly") + 1] == "yes"
    for role in ("worker", "api"):
        parser().parse_args(compose["services"][role]["command"])
        assert compose["services"][role]["environment"]["LEDGER_REDIS_URL"].startswith("redis://")


def test_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["call-ledger"]' in dockerfile
    for package in ("ledger", "worker", "api"):
        assert f"COPY {package} {package}" in dockerfile
