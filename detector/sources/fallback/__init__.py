"""The event source without BPF, for nodes where the eBPF program cannot load: the netlink proc
connector for process events and fanotify for file opens, with a reduced field set that
``FallbackSource.describe()`` states at start-up."""

from detector.sources.fallback.fanotify import FanotifyError
from detector.sources.fallback.proc_connector import ConnectorError
from detector.sources.fallback.source import FallbackSource

__all__ = ["ConnectorError", "FallbackSource", "FanotifyError"]
