"""The deployment files are checked here, offline, without docker or a cluster.

- Configs: deploy/compose.plugins.toml and the plugins.toml of
  deploy/kubernetes/configmap.yaml are valid Bascule configs (in full, with
  the secrets they name set; and as CI checks them, ``validate --offline``).
- deploy/compose.yaml validates against the Compose Specification's JSON
  schema (vendored in tests/deploy_schemas/, see its README).
- The Kubernetes manifests validate against the Kubernetes API schemas of
  ``kubernetes-validate`` (bundled in the package: no network), strictly
  (unknown fields are errors).
- What no schema knows: the files agree with each other and with the configs
  (ports, probe paths, the config's path, grace periods longer than the drain,
  the image's user, Redis and demo service addresses).
- deploy/healthcheck.py against a running gateway; docs/deploy.md's links.

The container itself (podman build and run) is not tested here: see
docs/deploy.md, "The container".
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import trio
import yaml
from bascule.config import load_config, parse_config
from bascule.registry import discover
from bascule.testing import start_gateway
from bascule_sdk.settings import parse_duration

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "deploy_schemas"
CONFIG_PATH = "/etc/bascule/plugins.toml"  # where every deployment mounts the config
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Kubernetes versions the manifests must be valid for: the oldest and the newest bundled.
K8S_VERSIONS = (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.latest_version())
# The secrets configmap.yaml names as env:NAME, with stand-in values.
K8S_ENV = {
    "BASCULE_REDIS_URL": "redis://bascule-redis:6379/0",
    "BASCULE_REDIS_CACHE_URL": "redis://bascule-redis:6379/1",
    "BASCULE_JWT_SECRET": "a-test-secret-of-at-least-thirty-two-bytes!",
}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_config() -> dict:
    return tomllib.loads((DEPLOY / "compose.plugins.toml").read_text())


def k8s_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def k8s(kind: str, name: str) -> dict:
    found = [d for p in MANIFESTS for d in k8s_documents(p) if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kubernetes/, found {len(found)}"
    return found[0]


def configmap_text() -> str:
    return k8s("ConfigMap", "bascule-config")["data"]["plugins.toml"]


def configmap_config() -> dict:
    return tomllib.loads(configmap_text())


def port(address: str) -> int:
    return int(address.rpartition(":")[2])


def drain_seconds(config: dict) -> float:
    """Longest a stopping gateway takes: graceful_timeout, then 5 s more at most (bascule.server)."""
    return parse_duration(config["gateway"].get("graceful_timeout", 30.0)) + 5


def load_services_module():
    """examples/services.py, which compose.yaml's demo container runs."""
    spec = importlib.util.spec_from_file_location("deploy_demo_services", ROOT / "examples" / "services.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the configs ----------------------------------------------------------------------


def test_compose_config_is_a_valid_config():
    config = load_config(DEPLOY / "compose.plugins.toml", discover())
    assert len(config.routes) >= 5


def test_configmap_config_is_a_valid_config(monkeypatch):
    for name, value in K8S_ENV.items():
        monkeypatch.setenv(name, value)
    config = parse_config(configmap_text(), "configmap.yaml:plugins.toml", discover())
    assert config.routes


def test_configmap_config_names_only_the_secrets_the_deployment_sets():
    named = set(re.findall(r'"env:([A-Z0-9_]+)"', configmap_text()))
    assert named == set(K8S_ENV), "update K8S_ENV (and the Deployment's env) with the config's env: names"
    container = k8s("Deployment", "bascule")["spec"]["template"]["spec"]["containers"][0]
    assert named <= {e["name"] for e in container["env"]}, "the Deployment does not set every env: the config names"


@pytest.mark.parametrize("which", ["compose", "configmap"])
def test_validate_offline_accepts_the_configs_as_ci_would(which, tmp_path):
    if which == "compose":
        path = DEPLOY / "compose.plugins.toml"
    else:
        path = tmp_path / "plugins.toml"
        path.write_text(configmap_text())
    result = subprocess.run(
        [sys.executable, "-m", "bascule.cli", "validate", "--offline", "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},  # none of the secrets set
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["valid"] is True, result.stdout


# -- compose --------------------------------------------------------------------------


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)  # its "$schema": draft 2020-12
    validator.check_schema(schema)
    return validator(schema)


def test_compose_file_validates_against_the_compose_spec():
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_the_compose_schema_rejects_mistakes():
    """The schema is live: a misspelt key and a wrongly typed value are errors."""
    bad = copy.deepcopy(compose())
    bad["services"]["gateway"]["stop_grace_perod"] = "40s"
    bad["services"]["gateway"]["cap_drop"] = "ALL"  # a list
    assert len(list(compose_validator().iter_errors(bad))) == 2


def test_compose_gateway_replicas_share_redis_behind_the_balancer():
    services = compose()["services"]
    assert {"lb", "gateway", "redis", "demo"} <= set(services)
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] >= 2
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["demo"]["condition"] == "service_healthy"
    assert services["lb"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    # Only the balancer is published; the gateways' admin listener is not.
    assert "ports" not in gateway
    assert all(str(p).startswith("127.0.0.1:") for p in services["lb"]["ports"])
    # Every Redis URL of the config is the redis service's.
    urls = re.findall(r'redis_url = "([^"]+)"', (DEPLOY / "compose.plugins.toml").read_text())
    assert urls and {urlsplit(u).hostname for u in urls} == {"redis"}


def test_compose_gateway_mounts_the_config_read_only_and_runs_unprivileged():
    gateway = compose()["services"]["gateway"]
    assert f"./compose.plugins.toml:{CONFIG_PATH}:ro" in gateway["volumes"]
    assert gateway["read_only"] is True
    assert gateway["tmpfs"] == ["/tmp"]
    assert gateway["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in gateway["security_opt"]
    assert gateway["healthcheck"]["test"][-2:] == ["/opt/bascule/healthcheck.py", CONFIG_PATH]


def test_compose_stop_grace_period_covers_the_drain():
    gateway = compose()["services"]["gateway"]
    assert gateway["stop_signal"] == "SIGTERM"
    assert parse_duration(gateway["stop_grace_period"]) > drain_seconds(compose_config())


def test_compose_config_listens_where_compose_expects():
    config = compose_config()
    gateway = compose()["services"]["gateway"]
    listen, admin = config["gateway"]["listen"], config["gateway"]["admin"]
    assert listen.startswith("0.0.0.0:") and admin.startswith("0.0.0.0:"), "in a container: every interface"
    assert {str(port(listen)), str(port(admin))} == set(map(str, gateway["expose"]))
    nginx = (DEPLOY / "compose.nginx.conf").read_text()
    assert f"set $gateway gateway:{port(listen)};" in nginx


def test_compose_balancer_is_the_only_trusted_proxy():
    lb_address = compose()["services"]["lb"]["networks"]["bascule"]["ipv4_address"]
    assert compose_config()["gateway"]["trusted_proxies"] == [f"{lb_address}/32"]
    subnet = compose()["networks"]["bascule"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(lb_address) in ipaddress.ip_network(subnet)


def test_compose_demo_serves_every_target_of_the_config():
    """The demo container runs services.py's apps on their own ports: the config's targets name those."""
    services = load_services_module().SERVICES
    declared = compose_config()["services"]
    assert set(declared) == set(services)
    for name, (demo_port, _routes) in services.items():
        for target in declared[name]["targets"]:
            url = urlsplit(target if isinstance(target, str) else target["url"])
            assert (url.hostname, url.port) == ("demo", demo_port), f"services.{name}: {target}"
    demo = compose()["services"]["demo"]
    assert "../examples/services.py:/srv/services.py:ro" in demo["volumes"]
    assert "'0.0.0.0'" in demo["entrypoint"][-1]
    assert demo["init"] is True  # PID 1 without a SIGTERM handler would ignore `docker compose down`


# -- Kubernetes -----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(manifest, version):
    documents = k8s_documents(manifest)
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_the_kubernetes_schemas_reject_mistakes():
    """The validator is live and strict: a misspelt field and a wrongly typed value are errors."""
    deployment = k8s("Deployment", "bascule")
    for mutate in (
        lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriod=60),
        lambda d: d["spec"].update(replicas="two"),
    ):
        bad = copy.deepcopy(deployment)
        mutate(bad)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def gateway_pod() -> dict:
    return k8s("Deployment", "bascule")["spec"]["template"]["spec"]


def container_port(container: dict, name: str | int) -> int:
    if isinstance(name, int):
        return name
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return found


def test_deployment_replicas_roll_without_losing_capacity():
    spec = k8s("Deployment", "bascule")["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert k8s("PodDisruptionBudget", "bascule")["spec"]["maxUnavailable"] == 1


def test_deployment_probes_the_admin_listener():
    config = configmap_config()
    (container,) = gateway_pod()["containers"]
    assert container_port(container, "http") == port(config["gateway"]["listen"])
    assert container_port(container, "admin") == port(config["gateway"]["admin"])
    assert "admin_token" not in config["gateway"], "the probes send no Authorization header"
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert container_port(container, probe["port"]) == port(config["gateway"]["admin"])


def test_service_exposes_the_public_listener_only():
    (container,) = gateway_pod()["containers"]
    (service_port,) = k8s("Service", "bascule")["spec"]["ports"]
    assert container_port(container, service_port["targetPort"]) == port(configmap_config()["gateway"]["listen"])
    assert (
        k8s("Service", "bascule")["spec"]["selector"] == k8s("Deployment", "bascule")["spec"]["selector"]["matchLabels"]
    )


def test_deployment_mounts_the_config_map_read_only_at_the_config_path():
    pod = gateway_pod()
    (container,) = pod["containers"]
    assert container["args"] == ["run", "-c", CONFIG_PATH]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_directory, _, file_name = CONFIG_PATH.rpartition("/")
    (config,) = [name for name, m in mounts.items() if m["mountPath"] == config_directory]
    assert mounts[config]["readOnly"] is True
    assert volumes[config]["configMap"]["name"] == "bascule-config"
    assert volumes[config]["configMap"]["items"] == [{"key": "plugins.toml", "path": file_name}]
    assert [m["mountPath"] for m in mounts.values() if "emptyDir" in volumes[m["name"]]] == ["/tmp"]


def test_termination_grace_period_covers_pre_stop_and_the_drain():
    pod = gateway_pod()
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain_seconds(configmap_config())


def dockerfile_uid() -> int:
    text = (ROOT / "Dockerfile").read_text()
    uid = re.search(r"useradd [^\n]*--uid (\d+)", text)
    assert uid, "Dockerfile: no useradd --uid"
    assert re.search(rf"^USER {uid.group(1)}:\d+$", text, re.M), "Dockerfile: USER is not the numeric uid"
    return int(uid.group(1))


def test_pods_run_unprivileged_on_a_read_only_root():
    for name in ("bascule", "bascule-redis"):
        pod = k8s("Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
    assert gateway_pod()["securityContext"]["runAsUser"] == dockerfile_uid()


def test_redis_urls_name_the_redis_service():
    (container,) = gateway_pod()["containers"]
    redis = k8s("Service", "bascule-redis")
    urls = [e["value"] for e in container["env"] if e["name"].startswith("BASCULE_REDIS")]
    assert urls and {urlsplit(u).hostname for u in urls} == {redis["metadata"]["name"]}
    assert {urlsplit(u).port for u in urls} == {p["port"] for p in redis["spec"]["ports"]}


# -- the image and the systemd unit -----------------------------------------------------


def test_dockerfile_runs_the_mounted_config_with_a_health_check():
    text = (ROOT / "Dockerfile").read_text()
    assert f'CMD ["run", "-c", "{CONFIG_PATH}"]' in text
    assert re.search(rf'HEALTHCHECK .*\\\n\s+CMD \[.*"/opt/bascule/healthcheck.py", "{CONFIG_PATH}"\]', text)
    assert "STOPSIGNAL SIGTERM" in text
    assert dockerfile_uid() != 0


def test_systemd_unit_reloads_on_sighup_and_outwaits_the_drain():
    unit = (DEPLOY / "bascule.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    timeout = re.search(r"^TimeoutStopSec=(\d+)$", unit, re.M)
    assert timeout and int(timeout.group(1)) > drain_seconds({"gateway": {}})


# -- deploy/healthcheck.py --------------------------------------------------------------


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_healthcheck_asks_the_admin_listener_of_the_config(nursery, tmp_path):
    healthcheck = load_healthcheck()
    running = await start_gateway(nursery, '[gateway]\nadmin_token = "s3cret"\n', admin=True)
    admin = urlsplit(running.admin_url).netloc
    config = tmp_path / "plugins.toml"

    config.write_text(f'[gateway]\nadmin = "{admin}"\nadmin_token = "s3cret"\n')
    assert await trio.to_thread.run_sync(healthcheck.healthy, config)
    config.write_text(f'[gateway]\nadmin = "{admin}"\nadmin_token = "wrong"\n')
    assert not await trio.to_thread.run_sync(healthcheck.healthy, config)  # 401
    config.write_text(f'[gateway]\nlisten = "{urlsplit(running.url).netloc}"\n')  # no admin: TCP to listen
    assert await trio.to_thread.run_sync(healthcheck.healthy, config)

    running.stop.set()
    await trio.sleep(0.5)
    config.write_text(f'[gateway]\nadmin = "{admin}"\nadmin_token = "s3cret"\n')
    assert not await trio.to_thread.run_sync(healthcheck.healthy, config)


def test_healthcheck_reaches_wildcard_binds_on_loopback():
    healthcheck = load_healthcheck()
    assert healthcheck.local("0.0.0.0:8081") == ("127.0.0.1", 8081)
    assert healthcheck.local("[::]:8081") == ("::1", 8081)
    assert healthcheck.local("10.1.2.3:8081") == ("10.1.2.3", 8081)


# -- docs/deploy.md ---------------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text."""
    headings = re.findall(r"^#{1,6} (.+?)\s*$", re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_deploy_doc_links_resolve():
    doc = ROOT / "docs" / "deploy.md"
    text = doc.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"docs/deploy.md: {link}: no such file"
        if anchor:
            assert path.suffix == ".md", f"docs/deploy.md: {link}: anchor into a non-Markdown file"
            assert anchor in anchors(path.read_text()), f"docs/deploy.md: {link}: no such heading"


def test_deploy_doc_commands_name_the_files_that_exist():
    text = (ROOT / "docs" / "deploy.md").read_text()
    for path in re.findall(r"\b(deploy/[\w./-]+\.(?:yaml|toml|conf|service|py))\b", text):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
