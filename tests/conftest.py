"""Shared pytest setup.

Under CI (the ``CI`` environment variable is set) hypothesis runs
derandomized, so a submission's verdict does not depend on which random
examples a run happened to draw; developers' runs keep exploring new ones.
"""

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
from hypothesis import settings

TOOLS = Path(__file__).resolve().parents[1] / "tools"

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def load_tool() -> Callable[[str], ModuleType]:
    """Import a script from ``tools/`` by name (they are scripts, not a package)."""
    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"satgw_tool_{name}", TOOLS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered before it runs, as an import would: dataclasses resolve their annotations through it.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return load


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skipped browser test fails the run: CI installs Chromium, so a skip there means it broke."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and item.get_closest_marker("browser") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"browser test skipped under CI (CI must install Chromium, see .ci/run): {reason}"
