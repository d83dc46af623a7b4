"""Bounds on what the device reads from the TUF repository (pure data; no python-tuf import)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.errors import InputError


@dataclass(frozen=True)
class MetadataLimits:
    """Caps per metadata file and per download. The defaults leave room for thousands of approved images
    (one target is about 600 bytes) while keeping the agent's memory bounded."""

    root: int = 128 * 1024
    timestamp: int = 16 * 1024
    snapshot: int = 256 * 1024
    targets: int = 4 * 1024 * 1024
    root_rotations: int = 32
    max_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("root", "timestamp", "snapshot", "targets", "root_rotations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"trust limit {name!r} has value {value!r}; use a positive integer")
        if not self.max_seconds > 0:
            raise InputError(f"trust limit 'max_seconds' has value {self.max_seconds!r}; use a positive number")

    def cap(self, role: str) -> int:
        """The size cap of ``role``'s metadata file (delegated targets roles share the ``targets`` cap)."""
        return int(getattr(self, role)) if role in ("root", "timestamp", "snapshot") else self.targets
