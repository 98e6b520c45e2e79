"""Hypothesis settings profiles, chosen by MEMSLOT_FUZZ_PROFILE (dev, ci, deep); CI=true
picks ci.  The example database lives at MEMSLOT_FUZZ_DB (default .hypothesis/examples), a
path a team can share."""
import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_db = DirectoryBasedExampleDatabase(os.environ.get("MEMSLOT_FUZZ_DB", ".hypothesis/examples"))
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=60, database=_db, **_common)
# ci: the same examples on every run (derandomize has no database by definition)
settings.register_profile("ci", max_examples=120, derandomize=True, print_blob=True, **_common)
settings.register_profile("deep", max_examples=3000, database=_db, **_common)
settings.load_profile(os.environ.get("MEMSLOT_FUZZ_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
