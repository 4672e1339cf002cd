"""Getting a node ready for the eBPF source, and saying precisely why it is not.

``prepare_node()`` is ``lanner detector setup``: it mounts tracefs, links kernel headers where
bcc looks for them, and makes bcc's Python package importable from this interpreter. Every step
is idempotent and says what it did and why. ``diagnose()`` lists what stops eBPF from loading
right now, one reason per line, without changing anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")  # where bcc looks first
MODULES = Path("/lib/modules")
SRC = Path("/usr/src")
BCC_PACKAGE = Path("/usr/lib/python3/dist-packages/bcc")  # Debian's python3-bpfcc
BTF = Path("/sys/kernel/btf/vmlinux")
LOCKDOWN = Path("/sys/kernel/security/lockdown")
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
APT_PACKAGES = "python3-bpfcc bpfcc-tools linux-headers-amd64 bpftool"
# Capability bits (linux/capability.h): SYS_ADMIN, or PERFMON + BPF since 5.8.
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    changed: bool  # False: already in place, or could not be done (see ok)
    ok: bool
    detail: str  # what was done and why, or why it could not be

    def __str__(self) -> str:
        mark = "changed" if self.changed else ("ok" if self.ok else "FAILED")
        return f"[{mark}] {self.name}: {self.detail}"


def tracefs_root() -> Path | None:
    """The mounted tracing directory, as bcc will pick it; None when neither is mounted."""
    for root in (DEBUGFS_TRACING, TRACEFS):
        if (root / "events").is_dir():
            return root
    return None


def _version_key(path: Path) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", path.name)]


def newest_headers(src: Path = SRC) -> tuple[Path, Path] | None:
    """The newest installed Debian header pair: (linux-headers-V-amd64, linux-headers-V-common).
    The arch directory holds the generated files and config, the common one the sources."""
    for build in sorted(src.glob("linux-headers-*-amd64"), key=_version_key, reverse=True):
        common = build.with_name(build.name.removesuffix("-amd64") + "-common")
        if (common / "include/linux/kconfig.h").is_file():
            return build, common
    return None


def headers_dir(headers: str | None = None, release: str | None = None) -> Path:
    """Where bcc will read kernel headers from (mirrors libbcc's choice): BCC_KERNEL_SOURCE or
    ``headers`` when set, else /lib/modules/<release>/source if it and build both exist, else
    /lib/modules/<release>/build."""
    if headers or os.environ.get("BCC_KERNEL_SOURCE"):
        return Path(headers or os.environ["BCC_KERNEL_SOURCE"])
    kdir = MODULES / (release or os.uname().release)
    if (kdir / "build").is_dir() and (kdir / "source").is_dir():
        return kdir / "source"
    return kdir / "build"


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def diagnose(headers: str | None = None, *, compile_check: bool = True) -> list[str]:
    """Why the eBPF source cannot load now; empty when nothing is known to stop it.
    ``headers``: a kernel header tree to use instead of /lib/modules/<release> (bcc's
    BCC_KERNEL_SOURCE). ``compile_check`` also compiles and attaches a one-tracepoint program,
    which catches what the file checks cannot (broken headers, clang errors) and costs ~0.5 s."""
    reasons = []
    uname = os.uname()
    if uname.machine != "x86_64":
        reasons.append(f"this is {uname.machine}: the program reads syscall arguments from the "
                       "x86_64 user registers")
    version = tuple(int(n) for n in re.findall(r"\d+", uname.release)[:2])
    if version < (5, 15):
        reasons.append(f"kernel {uname.release} is older than 5.15: the program reads syscall "
                       "arguments with bpf_task_pt_regs, new in 5.15")
    caps = _capabilities()
    if not (caps >> _CAP_SYS_ADMIN & 1 or (caps >> _CAP_BPF & 1 and caps >> _CAP_PERFMON & 1)):
        reasons.append("not privileged: loading BPF tracing programs needs root, or "
                       "CAP_BPF + CAP_PERFMON (kernel >= 5.8) or CAP_SYS_ADMIN")
    root = tracefs_root()
    if root is None:
        reasons.append(f"tracefs is not mounted (no {TRACEFS}/events): run `lanner detector "
                       f"setup` or `mount -t tracefs nodev {TRACEFS}`")
    elif not (root / "events/syscalls").is_dir():
        reasons.append(f"{root}/events/syscalls is missing: the kernel lacks "
                       "CONFIG_FTRACE_SYSCALLS, so there are no per-syscall tracepoints")
    if not BTF.is_file():
        reasons.append(f"{BTF} is missing: the kernel has no BTF (CONFIG_DEBUG_INFO_BTF), "
                       "which gives the struct offsets the program reads")
    kpath = headers_dir(headers)
    if not (kpath / "include/linux/kconfig.h").is_file() and not KHEADERS.exists():
        reasons.append(f"kernel headers not found at {kpath} (no include/linux/kconfig.h) and "
                       f"no {KHEADERS}: run `lanner detector setup` after installing "
                       "linux-headers-amd64")
    if LOCKDOWN.is_file() and "[confidentiality]" in LOCKDOWN.read_text():
        reasons.append("kernel lockdown is in confidentiality mode: BPF may not read kernel "
                       "memory; boot with lockdown=integrity or none")
    # In a child: importing bcc maps clang and LLVM into the process for good (see loader.py).
    found = subprocess.run([sys.executable, "-c", "import bcc"], capture_output=True, text=True,
                           timeout=60, check=False)
    if found.returncode:
        error = (found.stderr.strip().splitlines() or ["no output"])[-1]
        if "ModuleNotFoundError" in error or "ImportError" in error:
            reasons.append(f"bcc is not importable from {sys.executable}: {error} (install "
                           "python3-bpfcc, then `lanner detector setup` links it into this "
                           "environment)")
        else:  # the package loads libbcc.so at import time
            reasons.append(f"libbcc cannot be loaded: {error}")
    if compile_check and not reasons:
        reasons += _trial_compile(headers)
    return reasons


def _trial_compile(headers: str | None) -> list[str]:
    """Compile and attach the smallest program like ours, in a child process so a crash or a
    leaked attachment cannot affect the caller."""
    env = dict(os.environ)
    if headers:
        env["BCC_KERNEL_SOURCE"] = headers
    program = ("from bcc import BPF\n"
               "BPF(text='TRACEPOINT_PROBE(sched, sched_process_exit) { return 0; }')\n")
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    if done.returncode == 0:
        return []
    output = (done.stderr + done.stdout).strip()
    return [f"a test BPF program did not compile and load:\n{output[-2000:]}"]


def _mount_tracefs() -> Step:
    name = "tracefs"
    if tracefs_root() is not None:
        return Step(name, False, True, f"mounted ({tracefs_root()}); tracepoints are visible")
    done = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        return Step(name, False, False, f"mount -t tracefs nodev {TRACEFS} failed: "
                    f"{done.stderr.strip()}")
    return Step(name, True, True, f"mounted at {TRACEFS}: bcc reads tracepoint formats there "
                "and attaches through it")


def _link_headers(release: str) -> Step:
    name = "kernel headers"
    kdir = MODULES / release
    if (headers_dir(release=release) / "include/linux/kconfig.h").is_file():
        return Step(name, False, True, f"{headers_dir(release=release)} has headers for bcc")
    found = newest_headers()
    if found is None:
        return Step(name, False, False, f"no /usr/src/linux-headers-*-amd64 with a matching "
                    f"-common directory: install {APT_PACKAGES}")
    build, common = found
    kdir.mkdir(parents=True, exist_ok=True)
    for link, target in ((kdir / "build", build), (kdir / "source", common)):
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return Step(name, True, True, f"linked {kdir}/build -> {build} and source -> {common}: "
                f"no headers package exists for {release}; the program reads kernel structs "
                "only through BTF offsets, so older headers are safe for the rest")


def _link_bcc() -> Step:
    name = "bcc Python package"
    site = Path(sysconfig.get_paths()["purelib"])
    link = site / "bcc"
    if link.exists():
        return Step(name, False, True, f"importable from {link}")
    if not BCC_PACKAGE.is_dir():
        return Step(name, False, False, f"{BCC_PACKAGE} is missing: install python3-bpfcc")
    if link.is_symlink():  # dangling
        link.unlink()
    link.symlink_to(BCC_PACKAGE)
    return Step(name, True, True, f"linked {link} -> {BCC_PACKAGE}: only that package, since "
                "all of dist-packages would bring Debian's older libraries into this environment")


def prepare_node(release: str | None = None) -> list[Step]:
    """Make this node able to run the eBPF source; idempotent. Needs root."""
    return [_mount_tracefs(), _link_headers(release or os.uname().release), _link_bcc()]


def main() -> int:
    steps = prepare_node()
    for step in steps:
        print(step)
    reasons = diagnose()
    for reason in reasons:
        print(f"eBPF cannot load: {reason}")
    if not reasons:
        print("eBPF can load on this node (a test program compiled and attached)")
    return 0 if all(step.ok for step in steps) and not reasons else 1


if __name__ == "__main__":
    sys.exit(main())
