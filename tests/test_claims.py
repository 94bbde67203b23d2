"""The power line of a claim: the gap its seeds could detect, checked by simulating the paired t-test."""
import math

import numpy as np
import pytest
from scipy.stats import ttest_rel

from mixedae_core.lab.claims import claim, detectable_gap


@pytest.mark.parametrize("n", [3, 6, 12])
def test_a_gap_at_the_power_line_is_detected_four_times_in_five(n):
    rng = np.random.default_rng(n)
    spread = rng.normal(size=n)
    spread = (spread - spread.mean()) / spread.std(ddof=1)  # paired differences whose sample sd is exactly 1
    gap = detectable_gap(spread, np.zeros(n))
    trials = 4000
    diffs = gap + rng.normal(size=(trials, n))  # a true gap of that size, differences of sd 1
    detected = np.mean([ttest_rel(d, np.zeros(n)).pvalue < 0.05 for d in diffs])
    assert detected == pytest.approx(0.8, abs=0.03)
    assert detectable_gap(2 * spread, np.zeros(n)) == pytest.approx(2 * gap)  # in the values' units


def test_the_power_line_needs_two_pairs_and_a_spread():
    assert math.isnan(detectable_gap([1.0], [0.0]))
    assert math.isnan(detectable_gap([1.0, 2.0], [0.0, 1.0]))  # the same difference in every pair
    assert detectable_gap([1.0, 2.0], [0.0, 0.5]) > 0


def test_a_claim_carries_its_power_line_in_its_units():
    """In points, as the claim's difference; none from a single seed."""
    c = claim("a > b", [0.81, 0.82, 0.80], [0.80, 0.80, 0.79], +1, "a", "b")
    assert c["detectable_gap"] == pytest.approx(detectable_gap([81, 82, 80], [80, 80, 79]), rel=1e-6)
    assert math.isnan(claim("a > b", [0.8], [0.7], +1, "a", "b")["detectable_gap"])
