"""Loads the hypothesis profile named by the environment variable ROSETTA_PROFILE (default: ci).

dev       few random examples, for quick edits
ci        derandomized (the same examples every run) and bounded, so the suite stays within minutes
thorough  many random examples, for a long run before a release

The profiles, and the shares of them that costly tests ask for, are defined in
parity_tests/strategies.py (PROFILE_EXAMPLES, examples(share)).
"""

import os

from hypothesis import settings

from parity_tests.strategies import PROFILE_EXAMPLES

_profile = os.environ.get("ROSETTA_PROFILE", "ci")
if _profile not in PROFILE_EXAMPLES:
    raise ValueError(f"ROSETTA_PROFILE={_profile!r} is not one of {sorted(PROFILE_EXAMPLES)}")
settings.load_profile(_profile)
