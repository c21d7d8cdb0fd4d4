"""The Hypothesis profiles of the property tests, and how many examples each test runs.

"ci", the default, runs a fixed number of examples, derived from a fixed seed (`derandomize`), so a
run of the whole suite costs the same every time and a failure reproduces; "long" runs twenty times
as many, each run drawing new ones: `.venv/bin/pytest tests --hypothesis-profile=long`.
"""

from __future__ import annotations

from hypothesis import settings

CI_EXAMPLES = 100
LONG_FACTOR = 20

settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("long", max_examples=CI_EXAMPLES * LONG_FACTOR, deadline=None, print_blob=True)
settings.load_profile("ci")  # --hypothesis-profile, read after the conftest is imported, overrides it


def examples(count: int) -> int:
    """`count` examples under the "ci" profile, scaled as the profile loaded asks (a test that costs
    more runs fewer than the profile's default)."""
    return max(1, count * settings.default.max_examples // CI_EXAMPLES)
