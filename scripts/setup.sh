#!/usr/bin/env bash
# Installs what `make run` and `make test` need: Debian packages (when root) and the venv.
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool: the detector's eBPF source (bcc, the
# kernel headers it compiles against, bpftool for the BTF test); podman runc busybox-static:
# real containers for the detector's tests.
APT_PACKAGES=(redis-server wrk python3-venv prometheus-alertmanager
              python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool podman runc busybox-static)

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
