"""The declared public API: `patientkit.__all__` both ways (as httpx's
tests/test_exported_members.py), imported lazily, and an error tree that names every
error class."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import patientkit
from patientkit import errors

NOT_YET = {"open_store"}  # patientkit.stores arrives with the store protocol (issue 11)


def resolve(name: str) -> object:
    try:
        return getattr(patientkit, name)
    except ModuleNotFoundError as exc:
        if name in NOT_YET and exc.name == "patientkit.stores":
            pytest.skip(f"{exc.name} does not exist yet")
        raise


def test_all_is_sorted_and_every_name_in_it_resolves_to_a_patientkit_object():
    assert patientkit.__all__ == sorted(patientkit.__all__)
    missing = []
    for name in patientkit.__all__:
        if name == "__version__":
            continue
        try:
            value = getattr(patientkit, name)
        except ModuleNotFoundError as exc:
            if name in NOT_YET and exc.name == "patientkit.stores":
                missing.append(name)
                continue
            raise
        assert value.__module__.startswith("patientkit."), name
        assert value.__name__ == name
    assert set(missing) <= NOT_YET


def test_every_public_member_is_in_all():
    for name in patientkit.__all__:  # load them all first: lazy names join vars() on use
        if name not in NOT_YET:
            getattr(patientkit, name)
    public = {
        name
        for name, value in vars(patientkit).items()
        if not name.startswith("_") and not isinstance(value, type(sys))  # not submodules
    }
    public.discard("annotations")  # from __future__
    public.discard("importlib")
    public.discard("TYPE_CHECKING")
    public.discard("Any")
    assert public <= set(patientkit.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = patientkit.Nope


def test_open_store_is_exported():
    assert callable(resolve("open_store"))


def test_importing_patientkit_loads_nothing_else():
    code = (
        "import sys, patientkit; "
        "print(sorted(m for m in sys.modules if m.startswith(('patientkit.', 'httpx', 'rich'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def all_error_classes() -> set[type[BaseException]]:
    for module in pkgutil.walk_packages(patientkit.__path__, "patientkit."):
        if module.name in ("patientkit.__main__", "patientkit.postgres", "patientkit.cluster"):
            continue  # runs the CLI / needs an optional extra
        importlib.import_module(module.name)
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [errors.PatientkitError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return {cls for cls in found if cls.__module__.startswith("patientkit.")}


def test_the_error_tree_docstring_names_every_error_class():
    doc = errors.__doc__ or ""
    unlisted = sorted(cls.__name__ for cls in all_error_classes() if cls.__name__ not in doc)
    assert unlisted == []
