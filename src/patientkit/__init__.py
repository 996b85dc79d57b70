"""patientkit: move patient data between systems, exactly, fast, losing nothing.

The library's public names, importable from `patientkit` itself (the modules behind them
may move; these names stay):

- the delivery buffer: `BatchBuffer`, `FlushResult`, `BufferStats`, `BufferFull`,
  `BufferStopped`, with its clocks `Clock`, `SystemClock`, `FakeClock`;
- the sink contract: `SinkResult`, `SinkError`, `PermanentError`, `PoisonError`,
  `PayloadTooLarge`, and the retry vocabulary `RetryableError`, `RetryPolicy`;
- the stores: `open_store(target)` (a SQLite path or a `postgresql://` URL);
- the error tree (see `patientkit.errors`): `PatientkitError`, `UsageError`,
  `RemoteError`, `InputError`, `ReadError`, `DeliveryError`, `SpoolError`,
  `SpoolLocked`.

Each name is imported on first use (module `__getattr__`), so `import patientkit` (and
with it every CLI start) loads nothing but this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "BatchBuffer": "patientkit.core.buffer",
    "BufferFull": "patientkit.core.delivery",
    "BufferStats": "patientkit.core.delivery",
    "BufferStopped": "patientkit.core.delivery",
    "Clock": "patientkit.core.clock",
    "DeliveryError": "patientkit.errors",
    "FakeClock": "patientkit.core.clock",
    "FlushResult": "patientkit.core.delivery",
    "InputError": "patientkit.errors",
    "PatientkitError": "patientkit.errors",
    "PayloadTooLarge": "patientkit.core.sinks",
    "PermanentError": "patientkit.core.sinks",
    "PoisonError": "patientkit.core.sinks",
    "ReadError": "patientkit.errors",
    "RemoteError": "patientkit.errors",
    "RetryPolicy": "patientkit.core.retry",
    "RetryableError": "patientkit.core.retry",
    "SinkError": "patientkit.core.sinks",
    "SinkResult": "patientkit.core.sinks",
    "SpoolError": "patientkit.core.spool",
    "SpoolLocked": "patientkit.core.spool",
    "SystemClock": "patientkit.core.clock",
    "UsageError": "patientkit.errors",
    "open_store": "patientkit.stores",
}

__all__ = [
    "BatchBuffer",
    "BufferFull",
    "BufferStats",
    "BufferStopped",
    "Clock",
    "DeliveryError",
    "FakeClock",
    "FlushResult",
    "InputError",
    "PatientkitError",
    "PayloadTooLarge",
    "PermanentError",
    "PoisonError",
    "ReadError",
    "RemoteError",
    "RetryPolicy",
    "RetryableError",
    "SinkError",
    "SinkResult",
    "SpoolError",
    "SpoolLocked",
    "SystemClock",
    "UsageError",
    "__version__",
    "open_store",
]

if TYPE_CHECKING:  # what type checkers and editors see; at run time, __getattr__ below
    from patientkit.core.buffer import BatchBuffer
    from patientkit.core.clock import Clock, FakeClock, SystemClock
    from patientkit.core.delivery import BufferFull, BufferStats, BufferStopped, FlushResult
    from patientkit.core.retry import RetryableError, RetryPolicy
    from patientkit.core.sinks import (
        PayloadTooLarge,
        PermanentError,
        PoisonError,
        SinkError,
        SinkResult,
    )
    from patientkit.core.spool import SpoolError, SpoolLocked
    from patientkit.errors import (
        DeliveryError,
        InputError,
        PatientkitError,
        ReadError,
        RemoteError,
        UsageError,
    )


def __getattr__(name: str) -> Any:
    """Import a public name on first use; AttributeError for any other."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'patientkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
