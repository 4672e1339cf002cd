"""Decoding the program's events into Records, from hand-made bytes: no kernel needed."""

from __future__ import annotations

import socket
import struct

from detector.sources.ebpf.decode import HEADER, LAYOUTS, Decoder, sockaddr
from detector.sources.record import Record


def test_sockaddr_decoding() -> None:
    inet = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 443) + bytes([10, 0, 0, 1])
    assert sockaddr(inet + bytes(8)) == (socket.AF_INET, "10.0.0.1", 443)
    inet6 = (struct.pack("<H", socket.AF_INET6) + struct.pack(">HI", 22, 0)
             + socket.inet_pton(socket.AF_INET6, "fe80::1") + bytes(4))
    assert sockaddr(inet6) == (socket.AF_INET6, "fe80::1", 22)
    unix = struct.pack("<H", socket.AF_UNIX)
    assert sockaddr(unix + b"/run/x.sock\0junk") == (socket.AF_UNIX, "/run/x.sock", 0)
    assert sockaddr(unix + b"\0abstract\0") == (socket.AF_UNIX, "@abstract", 0)
    assert sockaddr(struct.pack("<H", socket.AF_PACKET) + bytes(6)) == (socket.AF_PACKET, "", 0)
    assert sockaddr(b"") is None


def test_decoder_splits_strings_and_argv() -> None:
    kinds = [*LAYOUTS, "unlinkat"]
    decode = Decoder(kinds, clock_offset_ns=1_000)

    def event(kind: str, res: int, ints: list[int], data: bytes, blob: int = 0,
              local: int = 0) -> bytes:
        ints = ints + [0] * (6 - len(ints))
        return HEADER.pack(5, 9, res, *ints, 10, 11, 0, 0, kinds.index(kind), 1, blob, local,
                           b"bash\0garbage\0\0\0") + data

    extra = struct.pack("<4q", 100, 101, 7, 555)
    execve = decode(event("execve", 0, [34816, -1, 4, 0, 1, 2], extra + b"/bin/ls\0ls\0-l\0"))
    assert execve == Record("execve", 1_005, 10, 11, 0, 0, "bash", 9, 0, {
        "tty": 34816, "loginuid": -1, "flags": 4, "cap_inheritable": 0, "cap_permitted": 1,
        "cap_effective": 2, "sid": 100, "pgid": 101, "vpid": 7, "exe_ino": 555,
        "filename": "/bin/ls", "argv": ["ls", "-l"]}, 1)
    truncated = decode(event("execve", 0, [], extra + b"/bin/x\0a\0very-lo"))
    assert truncated.args["argv"] == ["a", "very-lo"]
    link = decode(event("linkat", -17, [-100, 3, 0], b"a\xff\0b\0"))
    assert link.args == {"olddir": -100, "newdir": 3, "flags": 0, "oldpath": "a\ufffd",
                         "newpath": "b"}
    addr = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 80) + bytes([1, 2, 3, 4])
    mine = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 4000) + bytes([9, 9, 9, 9])
    connect = decode(event("connect", 0, [5], addr + mine + bytes(8), blob=len(addr),
                           local=len(mine) + 8))
    assert connect.args == {"fd": 5, "addr": (socket.AF_INET, "1.2.3.4", 80),
                            "local": (socket.AF_INET, "9.9.9.9", 4000)}
    assert decode(event("sendto", 3, [5, 3], b"")).args == {"fd": 5, "size": 3}
    assert decode(event("unlinkat", -2, [], b"")).args == {}
