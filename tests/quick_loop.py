"""`make test`'s promise (a pytest plugin that conftest.py loads): every test module keeps at
least one test that the quick loop, ``pytest -m "not slow"``, runs.

It acts only on a run that deselects by exactly that expression and by nothing else (no
``-k``): there it ends the run before any test runs, naming each module whose tests are all
marked ``slow``. The whole run (``make check``) and every other selection are left alone.
"""
from __future__ import annotations

import pytest

QUICK = "not slow"
_DESELECTED = pytest.StashKey[list]()


def slow_only(selected: list[pytest.Item], deselected: list[pytest.Item]) -> list[str]:
    """The test files that have tests, none of them among ``selected``."""
    def files(items: list[pytest.Item]) -> set[str]:
        return {item.nodeid.split("::")[0] for item in items}

    return sorted(files(deselected) - files(selected))


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        item.config.stash.setdefault(_DESELECTED, []).append(item)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if config.getoption("markexpr") != QUICK or config.getoption("keyword") or config.getoption("deselect"):
        return
    modules = slow_only(session.items, config.stash.get(_DESELECTED, []))
    if modules:
        pytest.exit(f"{', '.join(modules)}: every test is marked slow, so `make test` (-m '{QUICK}') runs none "
                    "of its tests; leave at least one fast test of each module unmarked",
                    returncode=pytest.ExitCode.USAGE_ERROR)
