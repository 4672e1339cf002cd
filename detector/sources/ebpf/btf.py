"""Byte offsets of kernel struct fields, from the running kernel's BTF.

bcc compiles against whatever headers are installed, and on this fleet those are older than the
kernel, so ``task->mm`` written in C would use a stale offset and read garbage. The few fields
the program must read (the new image's argv, the tty, the loginuid, an exit status) are instead
read at offsets taken from ``/sys/kernel/btf/vmlinux``, which always describes the kernel that
is running. Parsing the BTF blob directly is ~0.2 s and needs no bpftool.
"""

from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
_STRUCT, _UNION, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG = 4, 5, 8, 9, 10, 11, 18
# Bytes that follow the 12-byte type header: a fixed part and a per-vlen part, per BTF kind.
_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
          15: (0, 12), 17: (4, 0), 19: (0, 12)}
_LAST_KIND = 19  # ENUM64
_MODIFIERS = (_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG)


class BtfError(Exception):
    """The kernel's BTF is missing, unreadable, or lacks a field the program reads."""


class Btf:
    """The struct and union layouts of one BTF blob."""

    def __init__(self, path: Path = VMLINUX) -> None:
        try:
            self._data = path.read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read kernel BTF {path}: {exc.strerror or exc} "
                           "(the kernel needs CONFIG_DEBUG_INFO_BTF)") from None
        magic, _, _, hdr_len, type_off, type_len, str_off, _ = _HEADER.unpack_from(self._data)
        if magic != _MAGIC:
            raise BtfError(f"{path} is not BTF (magic {magic:#x})")
        self._strings = hdr_len + str_off
        self._types: list[int] = [0]  # position of each type id's header; id 0 is void
        self._by_name: dict[str, int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, _ = _TYPE.unpack_from(self._data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            if kind in (_STRUCT, _UNION) and name_off:
                self._by_name.setdefault(self._name(name_off), len(self._types))
            self._types.append(pos)
            if not 1 <= kind <= _LAST_KIND:
                raise BtfError(f"{path}: unknown BTF kind {kind}; this parser knows 1-19")
            fixed, per_item = _EXTRA.get(kind, (0, 0))
            pos += _TYPE.size + fixed + per_item * vlen

    def size(self, struct_name: str) -> int:
        """sizeof(struct struct_name)."""
        return _TYPE.unpack_from(self._data, self._types[self._struct(struct_name)])[2]

    def offset(self, struct_name: str, field: str) -> int:
        """Byte offset of ``field`` in ``struct struct_name``, looking through anonymous
        struct and union members (``mm_struct.arg_start`` sits in one since 5.x)."""
        found = self._find(self._struct(struct_name), field)
        if found is None:
            raise BtfError(f"kernel BTF: struct {struct_name} has no field {field}")
        return found // 8

    def _struct(self, name: str) -> int:
        type_id = self._by_name.get(name)
        if type_id is None:
            raise BtfError(f"kernel BTF has no struct {name}")
        return type_id

    def _find(self, type_id: int, field: str) -> int | None:
        pos = self._types[type_id]
        _, info, _ = _TYPE.unpack_from(self._data, pos)
        bitfields = bool(info >> 31)
        for i in range(info & 0xFFFF):
            name_off, member_type, offset = _MEMBER.unpack_from(self._data, pos + 12 + 12 * i)
            bits = offset & 0xFFFFFF if bitfields else offset
            if name_off and self._name(name_off) == field:
                return bits
            if not name_off:
                inner = self._resolve(member_type)
                if inner is not None:
                    found = self._find(inner, field)
                    if found is not None:
                        return bits + found
        return None

    def _resolve(self, type_id: int) -> int | None:
        """The struct/union behind typedefs and qualifiers, or None for any other type."""
        while type_id:
            _, info, ref = _TYPE.unpack_from(self._data, self._types[type_id])
            kind = (info >> 24) & 0x1F
            if kind in (_STRUCT, _UNION):
                return type_id
            if kind not in _MODIFIERS:
                return None
            type_id = ref
        return None

    def _name(self, offset: int) -> str:
        start = self._strings + offset
        return self._data[start:self._data.index(b"\0", start)].decode()
