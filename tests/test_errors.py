"""The error tree (patientkit.errors): every error pickles whole, so an error raised in a
worker process or on a Dask worker arrives as itself, with its attributes."""

import importlib
import pickle
import pkgutil

import pytest

import patientkit
from patientkit.core.counting import CsvError
from patientkit.core.retry import RetryableError
from patientkit.errors import PatientkitError


def every_error_class() -> list[type[PatientkitError]]:
    for module in pkgutil.walk_packages(patientkit.__path__, "patientkit."):
        if module.name.endswith("__main__"):
            continue  # it runs the CLI
        try:
            importlib.import_module(module.name)
        except ModuleNotFoundError as exc:  # an optional extra's module without the extra
            if (exc.name or "").startswith("patientkit"):
                raise
    found, todo = [], [PatientkitError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda cls: cls.__name__)
def test_every_error_pickles_whole(cls):
    error = cls.__new__(cls)
    error.args = ("a message", 7)
    error.__dict__.update(source="f.csv", line=3, reason="r", retry_after=1.5)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is cls
    assert again.args == error.args
    assert again.__dict__ == error.__dict__


def test_errors_with_their_own_init_pickle_as_raised():
    csv = pickle.loads(pickle.dumps(CsvError("x.csv", 4, "a reason")))
    assert (str(csv), csv.source, csv.line, csv.reason) == (
        "x.csv:4: a reason",
        "x.csv",
        4,
        "a reason",
    )
    retry = pickle.loads(pickle.dumps(RetryableError("busy", 2.0, attempts=3)))
    assert (str(retry), retry.reason, retry.retry_after) == ("busy (after 3 attempts)", "busy", 2.0)
