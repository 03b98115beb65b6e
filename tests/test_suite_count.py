"""README's counts of the suite's tests (Quickstart: the fast tier, the tests marked slow, the
full suite) against what pytest collects now."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from helpers.readme_figures import TEST_COUNTS, quoted

ROOT = Path(__file__).resolve().parents[1]


def test_readme_counts_the_tests_pytest_collects():
    # One collection answers both counts: with -m, pytest's summary reads
    # "304/400 tests collected (96 deselected)", the fast tier out of the whole suite.
    # Collecting imports every test module: ~10-15 s on 2 cores, no test runs.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow"]
        + ["-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = re.search(r"(\d+)/(\d+) tests? collected \((\d+) deselected\)", result.stdout)
    assert summary, result.stdout[-2000:]
    fast, total, slow = map(int, summary.groups())
    readme_fast, readme_slow, readme_total = map(int, quoted(TEST_COUNTS, "the suite's counts"))
    assert (readme_fast, readme_slow, readme_total) == (fast, slow, total), (
        f"README's Quickstart counts {readme_fast} fast-tier tests, {readme_slow} marked slow, "
        f"{readme_total} in all; pytest collects {fast}, {slow} and {total}. A test was added "
        "or removed (here or in a branch merged since): write the new counts into README "
        "('the fast tier of the tests: N tests', 'adds the N tests marked `slow`', "
        "'N tests in ... minutes'); the timings beside them stay as measured until re-measured."
    )
