"""The benchmarks under bench/ stay runnable as the code moves: every name they import
from patientkit exists (they are not run here: timing never goes in a unit test, and
their comparison tools are the `bench` extra's)."""

import ast
import importlib
import importlib.util

import pytest

from tests.helpers import ROOT

BENCHES = sorted((ROOT / "bench").glob("*.py"))


def patientkit_imports(source: str) -> list[tuple[str, str | None]]:
    """(module, name) for each `from patientkit… import name` and `import patientkit…`."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("patientkit"):
            found += [(node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.startswith("patientkit")]
    return found


@pytest.mark.parametrize("bench", BENCHES, ids=lambda path: path.name)
def test_every_name_a_benchmark_imports_from_patientkit_exists(bench):
    for module_name, name in patientkit_imports(bench.read_text()):
        module = importlib.import_module(module_name)
        if name is not None:
            assert hasattr(module, name) or importlib.util.find_spec(f"{module_name}.{name}"), (
                f"{bench.name}: {module_name} has no {name}"
            )


def test_the_benchmarks_are_found():
    assert {path.name for path in BENCHES} >= {"postgres.py", "server.py", "dask.py"}
