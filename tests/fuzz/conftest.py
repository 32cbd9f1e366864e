"""The fuzz suite's Hypothesis profiles: `ci` (the default: few examples, derandomized, so every run of the
suite tries the same inputs) and `fuzz` (`make fuzz`: many more, and new ones each run)."""

import os

from hypothesis import HealthCheck, settings

# The fixtures (users, a conversation, the engine) are set up once per test and shared by its examples.
SHARED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci", max_examples=20, derandomize=True, deadline=None, database=None, suppress_health_check=SHARED
)
examples = int(os.getenv("FUZZ_EXAMPLES", "400"))
settings.register_profile("fuzz", max_examples=examples, deadline=None, database=None, suppress_health_check=SHARED)
settings.load_profile(os.getenv("HYPOTHESIS_PROFILE", "ci"))
