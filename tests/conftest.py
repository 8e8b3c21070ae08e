"""Shared pytest setup.

Under CI (the ``CI`` environment variable is set) hypothesis runs
derandomized, so a submission's verdict does not depend on which random
examples a run happened to draw; developers' runs keep exploring new ones.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
