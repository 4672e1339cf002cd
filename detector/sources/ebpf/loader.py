"""Compile and attach the BPF program in a short-lived child, keep only its file descriptors.

bcc compiles with clang and LLVM, which stay mapped in whatever process imported bcc: about
90 MB of a detector's resident memory spent on a compiler used once at start. So a child
(``python -m detector.sources.ebpf.loader``) imports bcc, compiles and attaches, then hands the
parent, over a unix socket (SCM_RIGHTS), the fds that keep the program alive and readable:

- the ``events`` ring buffer and ``drops`` per-CPU array map fds (read through mmap and the
  bpf(2) syscall, no bcc needed);
- one perf event fd per attached tracepoint: the attachment lasts as long as an fd refers to
  it, so the parent detaches simply by closing them.

The child then leaves with ``os._exit``: bcc's exit handlers would disable the perf events,
which are the same open files the parent now holds.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAPS = ("events", "drops")
_MAX_FDS = 1024  # far above the number of tracepoints there are to attach
_LENGTH = struct.Struct("<Q")
_NR_BPF = 321  # x86_64
_ERROR_TAIL = 6000
_TIMEOUT_S = 120  # a compile takes a few seconds; the verifier gives up well before this
_BPF_MAP_LOOKUP_ELEM = 1


class LoadError(Exception):
    """The child could not compile or attach; the message has the compiler's output."""


@dataclass
class Loaded:
    """What the parent holds of a loaded program. ``close()`` detaches it."""

    maps: dict[str, int]  # map name -> fd
    tracepoints: dict[str, int]  # "category:event" -> perf event fd

    def close(self) -> None:
        for fd in [*self.tracepoints.values(), *self.maps.values()]:
            os.close(fd)
        self.tracepoints, self.maps = {}, {}


def load(text: str, cflags: list[str], headers: str | None) -> Loaded:
    """Compile ``text`` with ``cflags`` in a child, attach its tracepoints, return the fds."""
    env = dict(os.environ)
    if headers:
        env["BCC_KERNEL_SOURCE"] = headers
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        child = subprocess.Popen(
            [sys.executable, "-m", "detector.sources.ebpf.loader", str(theirs.fileno())],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        theirs.close()
        ours.settimeout(_TIMEOUT_S)
        try:
            request = json.dumps({"text": text, "cflags": cflags}).encode()
            ours.sendall(_LENGTH.pack(len(request)) + request)
            reply, fds, _flags, _addr = socket.recv_fds(ours, 1 << 16, _MAX_FDS)
            for fd in fds:  # received fds are inheritable: an exec (a restart) must not keep
                os.set_inheritable(fd, False)  # the old program attached
            while chunk := ours.recv(1 << 16):
                reply += chunk
            _stdout, stderr = child.communicate(timeout=_TIMEOUT_S)
        except (TimeoutError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
            raise LoadError(f"the loader process did not finish in {_TIMEOUT_S} s") from None
        if not reply:
            detail = stderr.decode(errors="replace").strip()[-2000:]
            raise LoadError(f"the loader process exited with status {child.returncode}"
                            + (f": {detail}" if detail else ""))
        answer = json.loads(reply)
        if not answer["ok"]:
            for fd in fds:
                os.close(fd)
            raise LoadError(answer["error"])
        names = [*MAPS, *answer["tracepoints"]]
        if len(fds) != len(names):
            for fd in fds:
                os.close(fd)
            raise LoadError(f"the loader sent {len(fds)} fds for {len(names)} objects")
        return Loaded(dict(zip(MAPS, fds[:len(MAPS)], strict=True)),
                      dict(zip(answer["tracepoints"], fds[len(MAPS):], strict=True)))


def possible_cpus() -> int:
    """How many values a per-CPU map holds: one per possible CPU (``0-N`` ranges)."""
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    return max(int(part.split("-")[-1]) for part in text.split(",")) + 1


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def lookup_percpu_u64(map_fd: int, key: int, cpus: int) -> list[int]:
    """The per-CPU u64 values at ``key`` (a u32) of a per-CPU array map, via bpf(2)."""
    key_buf = ctypes.c_uint32(key)
    values = (ctypes.c_uint64 * cpus)()
    # union bpf_attr for map element commands: map_fd (u32, padded), key, value, flags (u64).
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf),
                       ctypes.addressof(values), 0)
    attr_buf = ctypes.create_string_buffer(attr, len(attr))
    if _libc.syscall(_NR_BPF, _BPF_MAP_LOOKUP_ELEM, attr_buf, len(attr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf map lookup: {os.strerror(err)}")
    return list(values)


# ---- the child ------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> None:
    size = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))[0]
    request = json.loads(_recv_exactly(sock, size))
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "stderr"
        saved = os.dup(2)
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)  # clang's diagnostics are printed by libbcc, not raised
        try:
            import bcc

            program = bcc.BPF(text=request["text"].encode(), cflags=request["cflags"])
        except Exception as exc:
            os.dup2(saved, 2)
            output = log.read_text(errors="replace").strip()
            detail = f"{exc}".splitlines()[0] if f"{exc}" else type(exc).__name__
            # The tail of the verifier's log says why; the whole log can run to megabytes.
            error = (f"the BPF program did not load: {detail}"
                     + (f"\n{output[-_ERROR_TAIL:]}" if output else ""))
            sock.sendall(json.dumps({"ok": False, "error": error}).encode())
            return
        os.dup2(saved, 2)
    tracepoints = {name.decode(): fd for name, fd in program.tracepoint_fds.items()}
    fds = [program[name.encode()].map_fd for name in MAPS] + list(tracepoints.values())
    reply = json.dumps({"ok": True, "tracepoints": list(tracepoints)}).encode()
    socket.send_fds(sock, [reply], fds)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the detector went away before sending the program")
        data += chunk
    return data


if __name__ == "__main__":
    with socket.socket(fileno=int(sys.argv[1])) as channel:
        _serve(channel)
        channel.shutdown(socket.SHUT_WR)
    sys.stdout.flush()
    os._exit(0)  # not bcc's exit handlers: they would disable the parent's tracepoints
