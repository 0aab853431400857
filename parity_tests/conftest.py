"""Hypothesis profiles, chosen with the environment variable ROSETTA_PROFILE (default: ci).

dev       few random examples, for quick edits
ci        derandomized (the same examples every run) and bounded, so the suite stays within minutes
thorough  many random examples, for a long run before a release
"""

import os

from hypothesis import HealthCheck, settings

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=5, **_common)
settings.register_profile("ci", max_examples=20, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("ROSETTA_PROFILE", "ci"))
