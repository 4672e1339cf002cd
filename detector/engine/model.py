"""What the loader produces from rules files, before parsing and compiling.

Conditions and outputs are text here, exactly as Falco would hand them to its parser: lists
already substituted, exceptions already appended to the condition. ``Origin`` says where each
item was written so later stages can point errors at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sidekick.alert import Priority


@dataclass(frozen=True, slots=True)
class Origin:
    file: str
    line: int  # 1-based line of the item (`- rule: ...`)
    condition_line: int | None = None  # 1-based line where the condition text starts
    condition_column: int | None = None  # its 1-based column (for single-line conditions)


@dataclass(slots=True)
class Macro:
    name: str
    condition: str  # lists substituted
    origin: Origin
    # Global load positions (all files share one counter). A macro may only use macros whose
    # ``index`` is below its own ``visibility``; rules may use any macro.
    index: int = 0  # position of the first definition
    visibility: int = 0  # position of the latest define/append


@dataclass(slots=True)
class Rule:
    name: str
    condition: str  # lists substituted, exceptions appended
    output: str
    priority: Priority
    desc: str = ""
    enabled: bool = True
    tags: list[str] = field(default_factory=list)
    source: str = "syscall"
    warn_evttypes: bool = True
    skip_if_unknown_filter: bool = False
    origin: Origin = Origin("", 0)
    capture: bool = False  # request a capture when the rule fires
    capture_duration: int = 0  # ms; 0 means the configured default


@dataclass(slots=True)
class LoadedRules:
    """Every file's items merged in order (later files refine earlier ones)."""

    rules: list[Rule]  # in definition order, disabled ones included
    macros: dict[str, Macro]
    lists: dict[str, list[str]]  # expanded items (nested lists flattened)
    required_engine_version: str | None = None
    required_plugin_versions: list[dict[str, object]] = field(default_factory=list)
