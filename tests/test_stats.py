"""Confidence intervals: exact Student-t critical values, checked against printed tables."""
import math

import pytest
from hypothesis import given, strategies as st

from l2obench.stats import betainc, mean_ci, t_cdf, t_critical

# Two-sided 95% and 99% critical values from standard t tables.
TABLE = {1: (12.706, 63.657), 2: (4.303, 9.925), 5: (2.571, 4.032), 10: (2.228, 3.169),
         30: (2.042, 2.750), 49: (2.010, 2.680), 120: (1.980, 2.617)}


@pytest.mark.parametrize("df", sorted(TABLE))
def test_t_critical_matches_tables(df):
    c95, c99 = TABLE[df]
    assert t_critical(df) == pytest.approx(c95, abs=6e-4)
    assert t_critical(df, 0.99) == pytest.approx(c99, abs=6e-4)


def test_large_df_tends_to_normal():
    assert t_critical(1e6) == pytest.approx(1.959964, abs=1e-5)


@given(st.floats(0.5, 200), st.floats(-50, 50))
def test_t_cdf_is_symmetric(df, t):
    assert t_cdf(t, df) + t_cdf(-t, df) == pytest.approx(1.0, abs=1e-9)


@given(st.floats(0.1, 20), st.floats(0.1, 20), st.floats(1e-6, 1 - 1e-6))
def test_betainc_symmetry(a, b, x):
    assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-9)


def test_mean_ci():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci.mean == 2.5 and ci.n == 4
    assert ci.half_width == pytest.approx(3.182446 * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert f"{ci:.2f}" == "2.50 ± 2.05"
    assert mean_ci([3.0]).half_width == math.inf
    assert math.isnan(mean_ci([1.0, float("nan")]).mean)
    with pytest.raises(ValueError):
        mean_ci([])
