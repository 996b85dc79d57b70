"""patientkit's HTTP clients (httpx), one module per API, sharing `client.http`.

`import httpx` also imports httpx's own command-line client (`httpx._main`: click, rich's
progress and syntax, pygments), some 75 ms of CPU in every command that talks to a
server, unless that import fails; it is only `httpx.main`, the `httpx` console script,
which patientkit never runs. So, unless httpx is loaded already, that one module is
marked absent here (None in sys.modules: its import raises ImportError, which httpx
catches and answers with a stub `main`), before any client module imports httpx.
"""

from __future__ import annotations

import sys

if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
