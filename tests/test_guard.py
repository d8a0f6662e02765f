"""The test guard (tests/guard.py) itself: an unmarked test that starts Ray fails, and so does a
test that uses a Ray fixture without the mark."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def inner(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the inner session imports tests.guard
    pytester.makeconftest("pytest_plugins = ['tests.guard']\n")
    return pytester


@pytest.mark.ray  # the inner test's Ray is a descendant of this one too
def test_an_unmarked_test_that_starts_ray_fails_naming_the_mark(inner):
    inner.makepyfile(test_inner="""
import ray

def test_starts_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    ray.shutdown()

def test_ray_free():
    assert 1 + 1 == 2
""")
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "--timeout=300")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*test_starts_ray started ray without @pytest.mark.ray*"])


def test_a_ray_fixture_without_the_mark_is_a_usage_error(inner):
    inner.makepyfile(test_inner="""
import pytest

@pytest.fixture
def ray_cluster():
    return None

def test_uses_the_cluster(ray_cluster):
    pass
""")
    result = inner.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_uses_the_cluster uses a fixture that starts ray but lacks @pytest.mark.ray*"])
