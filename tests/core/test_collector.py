"""core.collector: the garbage collector during a bulk job."""

import gc

import pytest

from patientkit.core.collector import few_collections


def test_collections_are_rare_inside_and_everything_is_as_before_after():
    before, enabled = gc.get_threshold(), gc.isenabled()
    with few_collections(50_000):
        assert gc.get_threshold()[0] == 50_000 and gc.isenabled()
        assert gc.get_freeze_count() > 0
        cycle: list[object] = []
        cycle.append(cycle)  # garbage in a cycle is still collected
        del cycle
        assert gc.collect() >= 1
    assert (gc.get_threshold(), gc.isenabled(), gc.get_freeze_count()) == (before, enabled, 0)


def test_restored_after_an_error_too():
    before = gc.get_threshold()
    with pytest.raises(KeyError), few_collections():
        raise KeyError("x")
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)


def test_overlapping_jobs_restore_the_thresholds_once_the_last_ends():
    before = gc.get_threshold()
    first, second = few_collections(), few_collections()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the other job runs on: still rare collections
    assert gc.get_threshold()[0] == 100_000 and gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert (gc.get_threshold(), gc.get_freeze_count()) == (before, 0)
