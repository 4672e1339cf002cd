"""The eBPF event source: a bcc program on syscall and sched tracepoints (program.c,
syscalls.c), its decoder (decode.py), the source that builds and reads it (source.py), and
node preparation and diagnosis (setup.py). Nothing here imports bcc until a source is built.
"""
