"""Node preparation and diagnosis for the eBPF source, on the real kernel (as root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from detector.sources.ebpf import setup
from detector.sources.ebpf.btf import Btf
from detector.sources.ebpf.source import EbpfError, EbpfSource
from tests.ebpf_support import prepared_node

node = pytest.fixture(scope="module", name="node")(prepared_node)

def test_diagnose_names_missing_tracefs_and_prepare_node_mounts_it(node: None) -> None:
    script = (
        "import json\n"
        "from detector.sources.ebpf import setup\n"
        "before = setup.diagnose(compile_check=False)\n"
        "steps = [str(s) for s in setup.prepare_node()]\n"
        "print(json.dumps([before, steps, setup.diagnose(compile_check=False)]))\n"
    )
    unmount = ("for d in /sys/kernel/debug/tracing /sys/kernel/tracing; do "
               "mountpoint -q $d && umount $d; done; ")
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         unmount + f"exec {sys.executable} -c \"$0\"", script],
        capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    before, steps, after = json.loads(done.stdout)
    assert any("tracefs is not mounted" in reason for reason in before), before
    assert any(step.startswith("[changed] tracefs") for step in steps), steps
    assert after == []


def test_diagnose_and_source_name_a_wrong_headers_path(node: None) -> None:
    reasons = setup.diagnose(headers="/nonexistent/headers")
    assert any("kernel headers not found at /nonexistent/headers" in r for r in reasons), reasons
    with pytest.raises(EbpfError) as error:
        EbpfSource(["openat"], headers="/nonexistent/headers")
    assert any("kernel headers not found" in r for r in error.value.reasons)


def test_a_compile_error_is_reported_with_the_compiler_output(node: None,
                                                              tmp_path: Path) -> None:
    (tmp_path / "include/linux").mkdir(parents=True)
    (tmp_path / "include/linux/kconfig.h").touch()  # passes the file check, not the compiler
    reasons = setup.diagnose(headers=str(tmp_path))
    assert len(reasons) == 1 and "did not compile" in reasons[0]
    assert "'linux/types.h' file not found" in reasons[0]
    with pytest.raises(EbpfError) as error:
        EbpfSource(["openat"], headers=str(tmp_path))
    assert "'linux/types.h' file not found" in error.value.reasons[0]


def test_prepare_node_is_idempotent_and_links_headers(node: None) -> None:
    release = f"0.0.0-lanner-test-{os.getpid()}"
    try:
        first = setup.prepare_node(release)
        second = setup.prepare_node(release)
        headers = {step.name: step for step in first}["kernel headers"]
        assert headers.changed and headers.ok
        assert all(step.ok and not step.changed for step in second), second
        build = Path("/lib/modules", release, "build").resolve()
        source = Path("/lib/modules", release, "source").resolve()
        assert (build, source) == setup.newest_headers()
        assert setup.diagnose(compile_check=False) == []
    finally:
        shutil.rmtree(Path("/lib/modules", release), ignore_errors=True)


def test_btf_offsets_match_bpftool(node: None) -> None:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    dump = subprocess.run([bpftool, "btf", "dump", "file", str(setup.BTF), "format", "raw"],
                          capture_output=True, text=True, check=True).stdout
    start = dump.index("STRUCT 'task_struct' ")
    block = dump[start:dump.index("\n[", start)]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("'mm' "))
    assert Btf().offset("task_struct", "mm") == int(line.split("bits_offset=")[1]) // 8
