"""patientkit's tests (README: how to run them).

Imported before any conftest: pytest keeps each module it rewrote for its assertions (the
test modules and conftests; no plugin's package: pyproject's addopts) in __pycache__
unless Python may not write bytecode; with PYTHONDONTWRITEBYTECODE=1 set (as on
this machine) every test process rewrote and compiled all of them again (a run of one small file:
1.6 CPU-s before, 1.3 after).
The caches are pytest's own; the programs the tests start are not affected."""

import sys

sys.dont_write_bytecode = False
