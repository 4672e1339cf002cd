#!/bin/sh
# Regenerate sidekick/proto/lanner_pb2.py, lanner_pb2.pyi and lanner_pb2_grpc.py from
# sidekick/proto/lanner.proto with the pinned grpcio-tools (the generated modules refuse older
# protobuf/grpcio runtimes than the generator, so they are pinned together in pyproject.toml).
#
#   scripts/gen_proto.sh            regenerate in place
#   scripts/gen_proto.sh OUTDIR     write into OUTDIR/sidekick/proto/ instead (drift check)
#
# -I is the project root, so the generated _pb2_grpc imports `from sidekick.proto import ...`.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root}
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$root/.venv/bin/python" ]; then python=$root/.venv/bin/python; else python=python3; fi
fi
mkdir -p "$out/sidekick/proto"
cd "$root"
"$python" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    sidekick/proto/lanner.proto
