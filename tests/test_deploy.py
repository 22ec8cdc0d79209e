"""deploy/: the Dockerfile, the Kubernetes manifests, the systemd unit and SETUP.md, checked offline.

Images cannot be built and clusters cannot be reached here, so the files are parsed: manifests are validated
against Kubernetes' own JSON schemas (kubernetes-validate, strict, a pinned version), the Dockerfile and the
unit are read instruction by instruction, and the drain timings are recomputed from the controller's settings
model so the grace periods can never fall behind the drain they have to cover.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from sip_controller.agent.preflight import load_checked
from sip_controller.cli import _parser
from sip_controller.config import ConfigError, Limits, Reports, Secrets, Settings, load_settings
from sip_controller.service import serving

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "sipctl.service"
UNIT_ENV = DEPLOY / "systemd" / "sipctl.env.example"
SETUP = DEPLOY / "SETUP.md"

#: the Kubernetes version the manifests are validated against (kubernetes-validate ships its schemas)
K8S_VERSION = "1.33"
#: API groups of custom resources / tool configs that kubernetes-validate has no schema for: checked by hand
NOT_CORE_GROUPS = {"monitoring.coreos.com", "kustomize.config.k8s.io"}
APP_LABELS = {"app.kubernetes.io/name": "sip-controller"}
DRAIN_ENV = ("SIPCTL_LIMITS__DRAIN_TIMEOUT_S", "SIPCTL_LIMITS__DRAIN_WRAP_UP_S", "SIPCTL_REPORTS__FLUSH_TIMEOUT_S")
#: secrets the Deployment reads when the Secret has them (the admin API and the console are off without the token)
OPTIONAL_SECRETS = ("SIPCTL_ADMIN_TOKEN",)
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL", re.IGNORECASE)


# ---------------------------------------------------------------- helpers


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), path
    return docs


def _manifests() -> list[Path]:
    return sorted(K8S.glob("*.yaml"))


def _one(kind: str) -> dict[str, Any]:
    found = [doc for path in _manifests() for doc in _documents(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def _api_group(doc: dict[str, Any]) -> str:
    api_version = str(doc["apiVersion"])
    return api_version.split("/")[0] if "/" in api_version else ""


def _container() -> dict[str, Any]:
    containers = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def _clear_sipctl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SIPCTL_"):
            monkeypatch.delenv(name)


def _uvicorn_graceful_shutdown_s(monkeypatch: pytest.MonkeyPatch) -> float:
    """What ``sipctl serve`` gives uvicorn to close connections after the drain: read from serving.serve itself."""
    captured: list[uvicorn.Config] = []

    def fake_run(self: serving.DrainingServer, sockets: object = None) -> None:
        captured.append(self.config)

    monkeypatch.setattr(serving.DrainingServer, "run", fake_run)
    serving.serve(Starlette(), Settings(), host="127.0.0.1", port=0)
    assert len(captured) == 1
    value = captured[0].timeout_graceful_shutdown
    assert value is not None, "serving.serve must bound uvicorn's graceful shutdown, or no grace period suffices"
    return float(value)


def _shutdown_budget_s(settings: Settings, uvicorn_s: float) -> float:
    """Worst case from SIGTERM to exit: drain, wrap-up, uvicorn's shutdown, then the report flush (app.py)."""
    limits = settings.limits
    return limits.drain_timeout_s + limits.drain_wrap_up_s + uvicorn_s + settings.reports.flush_timeout_s


def _assert_serve_argv(argv: list[str], where: str) -> None:
    assert argv[:2] == ["sipctl", "serve"], f"{where} must run `sipctl serve`, got {argv}"
    args = _parser().parse_args(argv[1:])  # the real CLI: unknown flags fail here
    assert args.command == "serve"


# ---------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path) -> None:
    docs = _documents(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        if _api_group(doc) in NOT_CORE_GROUPS:
            continue  # no schema shipped; checked in test_servicemonitor / test_kustomization
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_catches_a_typo() -> None:
    """Guards the guard: strict validation must refuse an unknown field, or the test above proves nothing."""
    deployment = json.loads(json.dumps(_one("Deployment")))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_manifest_kind_is_known() -> None:
    kinds = sorted(str(doc["kind"]) for path in _manifests() for doc in _documents(path))
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "Kustomization", "PodDisruptionBudget", "Secret", "Service", "ServiceMonitor"]
    )


def test_deployment_probes_and_rollout() -> None:
    deployment = _one("Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["selector"]["matchLabels"] == APP_LABELS
    assert spec["template"]["metadata"]["labels"] == APP_LABELS

    container = _container()
    port = container["ports"][0]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    readiness = container["readinessProbe"]["httpGet"]
    liveness = container["livenessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz"
    assert liveness["path"] == "/livez"
    assert readiness["port"] in ("http", 8000)
    assert liveness["port"] in ("http", 8000)
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    # the image's ENTRYPOINT is ["sipctl"]: the args are what follows it
    _assert_serve_argv(["sipctl", *container["args"]], "the Deployment")
    assert container["args"][container["args"].index("--port") + 1] == str(port["containerPort"])


def test_deployment_security_and_resources() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["automountServiceAccountToken"] is False
    container = _container()
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), kind


def test_deployment_secrets_come_from_the_secret_template() -> None:
    secret = _one("Secret")
    assert secret["type"] == "Opaque"
    values: dict[str, str] = secret["stringData"]
    assert set(values) == {"OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET", "SIPCTL_DATABASE_URL"}
    for name, value in values.items():
        assert "REPLACE_ME" in value, f"{name} in the Secret template must be an obvious placeholder"
        assert not value.startswith(("sk-", "whsec_")), f"{name} must not look like a real secret"

    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in _container()["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert set(refs) == set(values) | set(OPTIONAL_SECRETS)
    for name, ref in refs.items():
        optional = {"optional": True} if name in OPTIONAL_SECRETS else {}
        assert ref == {"name": secret["metadata"]["name"], "key": name, **optional}
    # no secret as a literal value anywhere in the Deployment
    for name in _plain_env(_container()):
        assert not SECRET_NAME.search(name), f"{name} must come from the Secret, not a literal value"


def _trusted_proxies(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip()]


async def _client_seen(trusted: str, peer: str, forwarded_for: str) -> str:
    """The client address the app sees when ``peer`` connects with ``X-Forwarded-For: forwarded_for``, under
    ``FORWARDED_ALLOW_IPS=trusted``: uvicorn's own proxy-headers middleware, as ``sipctl serve`` runs it."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])

    config = uvicorn.Config(app, proxy_headers=True, forwarded_allow_ips=trusted)
    middleware = ProxyHeadersMiddleware(app, trusted_hosts=config.forwarded_allow_ips)
    scope = {"type": "http", "client": (peer, 40000), "headers": [(b"x-forwarded-for", forwarded_for.encode())]}
    await middleware(scope, None, None)  # type: ignore[arg-type]
    return seen[0]


@pytest.mark.anyio
async def test_deployment_trusts_forwarded_headers_from_the_pod_network_only() -> None:
    """Behind the ingress every connection comes from the ingress controller's pod, not from 127.0.0.1: without
    FORWARDED_ALLOW_IPS uvicorn ignores X-Forwarded-For, and every console client shares one login throttle
    budget (issue 14, item 11). The manifest trusts the pod network, never everyone."""
    value = _plain_env(_container()).get("FORWARDED_ALLOW_IPS")
    assert value, "the Deployment must set FORWARDED_ALLOW_IPS (the ingress controller's pods are not loopback)"
    networks = _trusted_proxies(value)
    assert networks
    for network in networks:
        assert network.is_private, f"{network}: trust the cluster's pod network, not public addresses"
        assert network.prefixlen >= 8, f"{network} is too wide"
    lines = (K8S / "deployment.yaml").read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip() == "- name: FORWARDED_ALLOW_IPS")
    above = []
    for line in reversed(lines[:at]):
        if not line.strip().startswith("#"):
            break
        above.append(line)
    comment = " ".join(above)
    for needle in ("X-Forwarded-For", "pod network", "login throttle", "podCIDR"):
        assert needle in comment, f"the comment above FORWARDED_ALLOW_IPS must explain its value ({needle})"
    inside = str(next(iter(networks[0].hosts())))
    assert await _client_seen(value, inside, "203.0.113.7") == "203.0.113.7"  # the ingress: the real client
    assert await _client_seen(value, "203.0.113.9", "198.51.100.1") == "203.0.113.9"  # anyone else: not believed


def test_the_admin_token_comes_from_the_secret_when_it_is_there() -> None:
    """The console and the admin API need SIPCTL_ADMIN_TOKEN: read from the Secret, optional (off without it)."""
    [ref] = [e["valueFrom"]["secretKeyRef"] for e in _container()["env"] if e["name"] == "SIPCTL_ADMIN_TOKEN"]
    assert ref == {"name": "sipctl-secrets", "key": "SIPCTL_ADMIN_TOKEN", "optional": True}
    template = (K8S / "secret.example.yaml").read_text(encoding="utf-8")
    assert "SIPCTL_ADMIN_TOKEN" in template


def test_config_map_is_mounted_where_sipctl_config_points() -> None:
    config_map = _one("ConfigMap")
    pod = _one("Deployment")["spec"]["template"]["spec"]
    container = _container()
    config_path = Path(_plain_env(container)["SIPCTL_CONFIG"])
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (name,) = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == config_map["metadata"]["name"]]
    assert mounts[name]["mountPath"] == str(config_path.parent)
    assert mounts[name]["readOnly"] is True
    assert config_path.name in config_map["data"]
    # a read-only root filesystem still needs a writable /tmp
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])


def test_config_map_config_passes_the_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_sipctl_env(monkeypatch)
    path = tmp_path / "sipctl.yaml"
    path.write_text(_one("ConfigMap")["data"]["sipctl.yaml"], encoding="utf-8")
    settings, _warnings = load_checked(path)
    assert settings.profiles[settings.default_profile].codec == "pcmu"
    assert not SECRET_NAME.search(" ".join(yaml.safe_load(path.read_text(encoding="utf-8"))))


def test_service_pdb_and_scraping_target_the_pods() -> None:
    container_port = _container()["ports"][0]
    service = _one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == APP_LABELS
    (port,) = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])

    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == APP_LABELS

    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(container_port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"


def test_servicemonitor() -> None:
    monitor = _one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] == _one("Service")["metadata"]["labels"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == _one("Service")["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_kustomization() -> None:
    kustomization = _one("Kustomization")
    resources: list[str] = kustomization["resources"]
    for name in resources:
        assert (K8S / name).is_file(), name
    assert "secret.example.yaml" not in resources, "the Secret template must never be applied as it is"
    kinds = {str(doc["kind"]) for name in resources for doc in _documents(K8S / name)}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds


# ---------------------------------------------------------------- drain timings


def test_pinned_drain_numbers_are_the_controller_defaults() -> None:
    """deploy/ pins the drain timings through env (so a YAML edit cannot desync them from the grace periods);
    the values it pins are the controller's defaults, read from the model. Change both together."""
    expected = {
        "SIPCTL_LIMITS__DRAIN_TIMEOUT_S": Limits.model_fields["drain_timeout_s"].default,
        "SIPCTL_LIMITS__DRAIN_WRAP_UP_S": Limits.model_fields["drain_wrap_up_s"].default,
        "SIPCTL_REPORTS__FLUSH_TIMEOUT_S": Reports.model_fields["flush_timeout_s"].default,
    }
    k8s_env = _plain_env(_container())
    unit_env = _unit_environment()
    for name, default in expected.items():
        assert float(k8s_env[name]) == default, f"deployment.yaml {name}={k8s_env[name]}, controller default {default}"
        assert float(unit_env[name]) == default, f"sipctl.service {name}={unit_env[name]}, controller default {default}"


def test_kubernetes_grace_period_covers_the_drain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_sipctl_env(monkeypatch)
    uvicorn_s = _uvicorn_graceful_shutdown_s(monkeypatch)
    config = tmp_path / "sipctl.yaml"
    config.write_text(_one("ConfigMap")["data"]["sipctl.yaml"], encoding="utf-8")
    for name, value in _plain_env(_container()).items():
        if name.startswith("SIPCTL_") and name != "SIPCTL_CONFIG":
            monkeypatch.setenv(name, value)
    settings = load_settings(config)  # the effective settings of the pod: ConfigMap under the Deployment's env
    for name in DRAIN_ENV:
        assert name in _plain_env(_container()), f"deployment.yaml must pin {name}"

    pod = _one("Deployment")["spec"]["template"]["spec"]
    pre_stop = _container()["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop_s = float(pre_stop[1])
    # Kubernetes counts the preStop hook against the grace period
    needed = pre_stop_s + _shutdown_budget_s(settings, uvicorn_s)
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed} (preStop + drain + shutdown + flush)"
    assert grace >= settings.limits.drain_timeout_s + settings.limits.drain_wrap_up_s + 10  # the README's rule


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _dockerfile_stages() -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"

    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            assert len(words) in (1, 3), f"unexpected FROM line: {line}"
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"instruction before FROM: {line}"
            stages[-1].instructions.append((keyword, rest))
    return stages


def _env_pairs(stage: Stage) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for keyword, rest in stage.instructions:
        if keyword == "ENV":
            for word in shlex.split(rest):
                name, sep, value = word.partition("=")
                assert sep, f"use ENV KEY=value, not the legacy form: {rest}"
                pairs[name] = value
    return pairs


def _exec_form(stage: Stage, keyword: str) -> list[str]:
    found = [rest for kw, rest in stage.instructions if kw == keyword]
    if not found:
        return []
    assert len(found) == 1, f"more than one {keyword}"
    value = json.loads(found[0])  # the shell form is not JSON: it would put sh -c between SIGTERM and sipctl
    assert isinstance(value, list)
    assert all(isinstance(item, str) for item in value)
    return [str(item) for item in value]


def test_dockerfile_is_multi_stage_and_digest_pinned() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    pinned = re.compile(r"^python:3\.11-slim@sha256:[0-9a-f]{64}$")
    for stage in stages:
        if stage.base in names:
            continue  # FROM an earlier stage
        assert pinned.match(stage.base), f"base image must be python:3.11-slim pinned by digest: {stage.base}"
    assert "refresh: docker pull python:3.11-slim" in DOCKERFILE.read_text(encoding="utf-8")
    final = stages[-1]
    copies = [rest for kw, rest in final.instructions if kw == "COPY"]
    assert any(rest.startswith("--from=") for rest in copies), "the final stage copies the build stage's output"
    assert not any(kw == "RUN" and "pip install" in rest for kw, rest in final.instructions)


def test_dockerfile_runtime_properties() -> None:
    final = _dockerfile_stages()[-1]
    users = [rest for kw, rest in final.instructions if kw == "USER"]
    assert users, "the final stage must switch to a non-root user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "USER must be a numeric UID (runAsNonRoot can check it)"
    assert int(uid) > 0, "USER must not be root"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    assert int(uid) == _one("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]

    env = _env_pairs(final)
    assert env.get("PYTHONUNBUFFERED") == "1"
    argv = _exec_form(final, "ENTRYPOINT") + _exec_form(final, "CMD")
    _assert_serve_argv(argv, "the image")
    port = argv[argv.index("--port") + 1]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert ("EXPOSE", port) in final.instructions
    stop = [rest for kw, rest in final.instructions if kw == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])


def test_dockerfile_bakes_in_no_secrets() -> None:
    for stage in _dockerfile_stages():
        for name in _env_pairs(stage):
            assert not SECRET_NAME.search(name), f"ENV {name} looks like a secret"
            assert not name.startswith("OPENAI_"), f"ENV {name}: OpenAI settings come from the runtime environment"
        for keyword, rest in stage.instructions:
            if keyword == "ARG":
                name = rest.split("=")[0]
                assert not SECRET_NAME.search(name), f"ARG {name} looks like a secret (build args end up in the image)"
            if keyword in ("COPY", "ADD"):
                assert ".env" not in rest, f"{keyword} {rest}"
                assert "sipctl.yaml" not in rest, f"{keyword} {rest}"


def test_dockerignore() -> None:
    entries = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"} <= entries
    assert "**/__pycache__" in entries


# ---------------------------------------------------------------- packaging


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_the_license_is_an_spdx_expression_matching_the_license_file() -> None:
    """``project.license`` is the SPDX string (PEP 639), not the deprecated table pip and setuptools warn about
    (issue 14, item 15), and it names the licence the LICENSE file holds."""
    pyproject = _pyproject()
    project = pyproject["project"]
    assert project["license"] == "Apache-2.0"  # a string: the table form {text = …} / {file = …} is deprecated
    assert project["license-files"] == ["LICENSE"]
    # the license and a License :: classifier together are an error under PEP 639
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    # setuptools reads an SPDX license (and license-files) from 77 on; an older one fails on the string
    requires = pyproject["build-system"]["requires"]
    [setuptools] = [r for r in requires if re.match(r"setuptools\b", r)]
    minimum = re.search(r">=\s*(\d+)", setuptools)
    assert minimum, setuptools
    assert int(minimum.group(1)) >= 77
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    head = " ".join(text.split()[:6])
    assert head == "Apache License Version 2.0, January 2004", head
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_image_build_has_every_license_file() -> None:
    """The wheel built in the image carries the license files pyproject names (a missing one is a warning, and a
    wheel without its licence)."""
    [build] = [stage for stage in _dockerfile_stages() if stage.name == "build"]
    copied = {
        word for keyword, rest in build.instructions if keyword == "COPY" for word in rest.split()[:-1]
    }
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for name in _pyproject()["project"]["license-files"]:
        assert name in copied, f"deploy/Dockerfile's build stage must COPY {name}"
        assert name not in ignored, f".dockerignore keeps {name} out of the build context"


# ---------------------------------------------------------------- systemd


def _unit() -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a setting: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def _unit_values(section: str, key: str) -> list[str]:
    return [value for k, value in _unit()[section] if k == key]


def _unit_value(section: str, key: str) -> str:
    values = _unit_values(section, key)
    assert len(values) == 1, f"[{section}] {key}: expected one value, found {values}"
    return values[0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unsupported time span {value!r}"
    number = float(match.group(1))
    return number * 60 if match.group(2) in ("min", "m") else number


def _unit_environment() -> dict[str, str]:
    """Environment= lines, then the env file (systemd lets EnvironmentFile= override Environment=)."""
    env: dict[str, str] = {}
    for value in _unit_values("Service", "Environment"):
        for word in shlex.split(value):
            name, _, val = word.partition("=")
            env[name] = val
    for raw in UNIT_ENV.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, _, val = line.partition("=")
            env[name.strip()] = val.strip()
    return env


def test_systemd_unit_runs_sipctl_serve() -> None:
    argv = shlex.split(_unit_value("Service", "ExecStart"))
    assert argv[0].startswith("/"), "ExecStart needs the absolute path of sipctl"
    assert argv[0].endswith("/sipctl"), argv[0]
    _assert_serve_argv(["sipctl", *argv[1:]], "the systemd unit")
    assert _unit_value("Service", "KillSignal") == "SIGTERM"
    assert _unit_value("Service", "Restart") == "on-failure"
    assert _unit_value("Service", "User") not in ("", "root", "0")
    assert _unit_value("Install", "WantedBy") == "multi-user.target"


def test_systemd_unit_hardening() -> None:
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert _unit_value("Service", key) == value, key


def test_systemd_secrets_come_from_an_environment_file() -> None:
    env_file = _unit_value("Service", "EnvironmentFile")
    assert env_file.lstrip("-").startswith("/etc/"), env_file
    for value in _unit_values("Service", "Environment"):
        for word in shlex.split(value):
            name = word.partition("=")[0]
            assert not SECRET_NAME.search(name), f"{name} belongs in {env_file}, not in the unit"
    example = UNIT_ENV.read_text(encoding="utf-8")
    for name in ("OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET"):
        (line,) = [ln for ln in example.splitlines() if ln.startswith(f"{name}=")]
        assert "REPLACE_ME" in line


def test_systemd_stop_timeout_covers_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_sipctl_env(monkeypatch)
    uvicorn_s = _uvicorn_graceful_shutdown_s(monkeypatch)
    env = _unit_environment()
    for name in DRAIN_ENV:
        assert name in env, f"sipctl.service must pin {name}"
    for name, value in env.items():
        if name.startswith("SIPCTL_") and name != "SIPCTL_CONFIG":
            monkeypatch.setenv(name, value)
    settings = Settings()  # defaults under the unit's environment (env wins over any YAML on the VM)
    timeout = _seconds(_unit_value("Service", "TimeoutStopSec"))
    assert timeout >= _shutdown_budget_s(settings, uvicorn_s)
    assert timeout >= settings.limits.drain_timeout_s + settings.limits.drain_wrap_up_s + 10


def test_grace_periods_agree() -> None:
    grace = _one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert _seconds(_unit_value("Service", "TimeoutStopSec")) == grace
    k8s_env = _plain_env(_container())
    unit_env = _unit_environment()
    for name in DRAIN_ENV:
        assert float(k8s_env[name]) == float(unit_env[name]), name


# ---------------------------------------------------------------- SETUP.md and README


def test_setup_guide_covers_the_steps() -> None:
    text = SETUP.read_text(encoding="utf-8")
    for needle in (
        "sip:<project id>@sip.api.openai.com;transport=tls",
        "/webhooks/openai",
        "realtime.call.incoming",
        "Call Transfer (SIP REFER)",
        "PSTN transfer",
        "sipctl check-config",
        "OPENAI_API_KEY",
        "OPENAI_WEBHOOK_SECRET",
        "## Troubleshooting",
        "did not leave within the verify window",
    ):
        assert needle in text, needle


def test_setup_guide_names_real_log_events_and_metrics() -> None:
    """Every log event and metric the troubleshooting table points at exists in the code."""
    text = SETUP.read_text(encoding="utf-8")
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "sip_controller").rglob("*.py"))
    events = set(re.findall(r"`((?:webhook|call|registry|serve|app)\.[a-z_]+)", text))
    assert {"call.accept_refused", "call.ended", "registry.drained", "webhook.rejected"} <= events
    for event in sorted(events):
        assert f'"{event}"' in source, f"SETUP.md names the log event {event}, which the code never logs"
    metrics = set(re.findall(r"\b(sipctl_[a-z_]+)", text))
    assert metrics
    for metric in sorted(metrics):
        base = re.sub(r"_(total|count|sum|bucket)$", "", metric)
        assert f'"{base}"' in source, f"SETUP.md names the metric {metric}, which the code does not define"


def test_setup_guide_covers_the_console_behind_a_proxy() -> None:
    """The operator's console in the shipped deploy (issue 14, item 11): the token, the Secure cookie behind TLS,
    the login throttle, and the proxy setting that keeps clients apart."""
    text = SETUP.read_text(encoding="utf-8")
    start = text.index("## 9. The live-calls console")
    section = text[start:text.index("\n## ", start + 1)]
    for needle in (
        "SIPCTL_ADMIN_TOKEN",
        "openssl rand -hex 32",
        "console.secure_cookie",
        "Secure",
        "429",
        "Retry-After",
        "console.login_free_failures",
        "FORWARDED_ALLOW_IPS",
        "kubectl port-forward",
        "replica",
    ):
        assert needle in section, needle
    unit = UNIT.read_text(encoding="utf-8")
    assert "FORWARDED_ALLOW_IPS" in unit
    assert _unit_environment().get("FORWARDED_ALLOW_IPS") == "127.0.0.1,::1"  # the reverse proxy on the VM
    assert "FORWARDED_ALLOW_IPS" in DOCKERFILE.read_text(encoding="utf-8")


def _troubleshooting_row(symptom: str) -> str:
    text = SETUP.read_text(encoding="utf-8")
    table = text[text.index("## Troubleshooting"):]
    [row] = [line for line in table.splitlines() if line.startswith(f"| {symptom}")]
    return row


def test_troubleshooting_busy_or_declined_names_the_anonymous_caller_limit() -> None:
    """Callers without a number share one bucket and may be refused outright (issue 14, item 5)."""
    row = _troubleshooting_row("Calls are answered with busy / declined")
    for needle in ("limits.anonymous_calls_per_minute", "callers.anonymous: reject", "without a number", "603"):
        assert needle in row, needle


def test_troubleshooting_failed_accept_says_the_call_is_rejected_once_the_ring_budget_is_spent() -> None:
    """A given-up accept is rejected with a clear SIP status, not left ringing (issue 14, item 6)."""
    row = _troubleshooting_row("Accept fails")
    for needle in ("limits.accept_give_up_status", "503", "480", "limits.ring_budget_s", "Retry-After",
                   "call.accept_failed", "accept_failed"):  # fmt: skip
        assert needle in row, needle


def test_readme_documents_the_header_caps_with_the_report_fields() -> None:
    """Header values kept on a call are capped (issue 14, item 4): the README says so with the code's numbers."""
    from sip_controller.calls.incoming import CUT_MARK, MAX_HEADER_VALUE_CHARS, MAX_HEADERS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fields = readme[readme.index("| `twilio_call_sid` |"):readme.index("`call.started` carries")]
    for needle in (f"{MAX_HEADER_VALUE_CHARS:,} characters", f"`{CUT_MARK}`", f"at most {MAX_HEADERS} headers",
                   "webhook.headers_capped", "GET /v1/calls/{id}"):  # fmt: skip
        assert needle in fields, needle


def test_readme_links_the_setup_guide() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "deploy/SETUP.md" in readme
    assert "## Deploy" in readme
    assert readme.index("## Deploy") < readme.index("## Layout")


def test_the_systemd_install_steps_say_how_to_build_the_wheel() -> None:
    """The unit's install steps install a wheel, so they also say how to build it (issue 14, item 15)."""
    setup = SETUP.read_text(encoding="utf-8")
    option_c = setup[setup.index("**C. systemd on a VM**"):setup.index("## 4.")]
    unit_steps = UNIT.read_text(encoding="utf-8").split("[Unit]", 1)[0]
    for where, text in (("SETUP.md, option C", option_c), ("sipctl.service", unit_steps)):
        build = re.search(r"pip wheel --no-deps (?:-w|--wheel-dir) (\S+) \.", text)
        assert build, f"{where} does not say how to build the wheel"
        assert f"{build.group(1).rstrip('/')}/sip_controller-" in text, f"{where} installs another wheel than it built"


def test_replicas_share_a_database_and_its_placeholder_is_refused() -> None:
    """More than one replica only works on one PostgreSQL: the URL comes from the Secret, and the template's
    placeholder is refused at start rather than silently falling back to a per-pod SQLite file."""
    assert _one("Deployment")["spec"]["replicas"] > 1
    refs = {e["name"] for e in _container()["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert "SIPCTL_DATABASE_URL" in refs
    placeholder = _one("Secret")["stringData"]["SIPCTL_DATABASE_URL"]
    with pytest.raises(ConfigError, match="SIPCTL_DATABASE_URL"):
        Secrets.from_env(
            {
                "OPENAI_API_KEY": "sk-test",
                "OPENAI_WEBHOOK_SECRET": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "SIPCTL_DATABASE_URL": placeholder,
            }
        )

