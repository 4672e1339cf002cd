# syntax=docker/dockerfile:1
# The detector: `lanner detect` with bcc (Debian's python3-bpfcc) and one set of kernel headers.
# The BPF programs use tracepoint arguments and BPF helpers, and take kernel struct offsets from
# the node's BTF, so these headers serve any x86_64 kernel >= 5.15 with BTF (the programs use
# bpf_task_pt_regs); `lanner detector setup` links them where bcc looks (/lib/modules/$(uname -r)).
# Runs as root with the capabilities the chart grants (BPF, PERFMON, SYS_RESOURCE, SYS_PTRACE).
# Build from the repository root:
#   docker build -f docker/detector.Dockerfile -t lanner/detector:0.1.0 .
ARG DEBIAN_IMAGE=debian:12-slim
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Lanner's own wheel (pure Python).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml ./
COPY detector/ detector/
COPY sidekick/ sidekick/
COPY outputs/ outputs/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# The kernel headers, unpacked without their packages' dependencies (the kernel build
# toolchain: gcc, kbuild), which bcc does not need: only the two header trees.
FROM ${DEBIAN_IMAGE} AS headers
# bookworm's linux-headers-amd64; the build fails loudly once Debian drops this version.
ARG HEADERS_VERSION=6.1.176-1
WORKDIR /tmp/debs
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
 && abi=$(apt-cache depends "linux-headers-amd64=${HEADERS_VERSION}" \
          | sed -n 's/^ *Depends: \(linux-headers-[0-9.-]*-amd64\)$/\1/p') \
 && test -n "$abi" \
 && apt-get download "${abi}" "${abi%-amd64}-common" \
 && mkdir /headers \
 && for deb in ./*.deb; do dpkg-deb -x "$deb" /headers; done \
 && rm -rf /var/lib/apt/lists/*

FROM ${DEBIAN_IMAGE}
ARG PYTHON_VERSION=3.11.2-1+b1
ARG BCC_VERSION=0.26.0+ds-1
ARG CA_VERSION=20230311+deb12u1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/lanner/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3="${PYTHON_VERSION}" python3-venv="${PYTHON_VERSION}" \
      python3-bpfcc="${BCC_VERSION}" ca-certificates="${CA_VERSION}" \
 && rm -rf /var/lib/apt/lists/*
COPY --from=headers /headers/usr/src/ /usr/src/
# Only what the detector imports, pinned as in pyproject.toml (the hub's libraries stay out).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/lanner \
 && pip install --no-cache-dir --no-deps /wheels/lanner-*.whl \
 && pip install --no-cache-dir \
      orjson==3.13.0 grpcio==1.85.1 grpcio-health-checking==1.85.1 protobuf==7.36.2 \
      pyyaml==6.0.3 google-re2==1.1.20251105 prometheus-client==0.26.0 \
 && ln -s /usr/lib/python3/dist-packages/bcc \
          "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/bcc" \
 && python3 -c 'import bcc, detector.cli'
COPY rules/ /etc/lanner/rules/
RUN mkdir -p /etc/lanner/rules.d
EXPOSE 8765 9765
ENTRYPOINT ["lanner"]
CMD ["detect", "--rules", "/etc/lanner/rules/lanner_rules.yaml", "--proc-root", "/host/proc"]
