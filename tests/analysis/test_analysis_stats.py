"""Correlations, bootstrap intervals and p-values against scipy on fixed data."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from irepa.analysis.stats import bootstrap_interval, correlate, leave_one_out, pearson, rank_average, spearman
from irepa.errors import IrepaError


@pytest.fixture(scope="module")
def study():
    """27 fixed points shaped like the paper's study: a metric that predicts FID, with noise and a few ties."""
    rng = np.random.default_rng(2512)
    x = np.round(rng.uniform(0.05, 0.45, 27), 2)  # rounding to 2 decimals makes ties, as published LDS values do
    y = 35.0 - 40.0 * x + rng.normal(0.0, 2.5, 27)
    return x, y


def test_r_and_p_equal_scipy(study):
    x, y = study
    for method, reference in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        result = correlate(x, y, method, n_resamples=100)
        expected = reference(x, y)
        assert result.r == pytest.approx(expected.statistic, abs=1e-12)
        assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
        assert result.n == 27


def test_ranks_equal_scipy_rankdata_with_ties():
    a = np.array([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.5, 0.5, 0.5, 0.5, 0.5, 0.1]])
    assert np.array_equal(rank_average(a), stats.rankdata(a, axis=-1))


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_bootstrap_interval_equals_scipy_bootstrap(study, method):
    x, y = study

    def statistic(a, b, axis):
        if method == "spearman":
            a, b = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
        return stats.pearsonr(a, b, axis=axis).statistic

    expected = stats.bootstrap(
        (x, y),
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=2000,
        confidence_level=0.9,
        method="percentile",
        rng=np.random.default_rng(7),
    ).confidence_interval
    low, high, degenerate = bootstrap_interval(x, y, method, n_resamples=2000, confidence=0.9, seed=7)
    assert degenerate == 0
    assert low == pytest.approx(expected.low, abs=1e-12)
    assert high == pytest.approx(expected.high, abs=1e-12)


def test_vectorized_statistics_equal_scipy_row_by_row(study):
    x, y = study
    rng = np.random.default_rng(0)
    index = rng.integers(0, 27, (50, 27))
    for row, p, s in zip(index, pearson(x[index], y[index]), spearman(x[index], y[index])):
        assert p == pytest.approx(stats.pearsonr(x[row], y[row]).statistic, abs=1e-12)
        assert s == pytest.approx(stats.spearmanr(x[row], y[row]).statistic, abs=1e-12)


def test_leave_one_out_and_degenerate_inputs(study):
    x, y = study
    labels = [f"e{i}" for i in range(27)]
    loo = leave_one_out(x, y, labels)
    for i in (0, 13, 26):
        keep = np.arange(27) != i
        assert loo[f"e{i}"] == pytest.approx(stats.pearsonr(x[keep], y[keep]).statistic, abs=1e-12)
    assert math.isnan(pearson(np.ones(4), np.arange(4.0)))
    # Three points: many resamples repeat one point (statistic undefined); they are dropped and counted.
    low, high, degenerate = bootstrap_interval([1.0, 2.0, 3.0], [2.0, 1.0, 4.0], n_resamples=500, seed=0)
    assert 0 < degenerate < 500 and -1 <= low <= high <= 1
    with pytest.raises(IrepaError, match="at least 3 points"):
        correlate([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(IrepaError, match="NaN or inf"):
        correlate([1.0, 2.0, math.nan], [1.0, 2.0, 3.0])


def test_small_n_p_value_is_exact_by_enumeration():
    x, y = [1.0, 2.0, 3.0], [2.0, 5.0, 9.0]
    rho = correlate(x, y, "spearman", n_resamples=10)
    assert rho.r == 1.0 and rho.p_value == pytest.approx(2 / 6)  # 2 of the 6 orderings reach |rho| = 1
    assert stats.spearmanr(x, y).pvalue == 0.0  # scipy's approximation, which is wrong here
    x5 = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    y5 = np.array([3.0, 1.0, 2.5, 0.2, 1.1])
    observed = abs(stats.pearsonr(x5, y5).statistic)
    orders = list(itertools.permutations(range(5)))
    hits = sum(abs(stats.pearsonr(x5[list(o)], y5).statistic) >= observed - 1e-12 for o in orders)
    exact = hits / len(orders)  # 2 of 120, enumerated with scipy's r
    assert correlate(x5, y5, n_resamples=10).p_value == pytest.approx(exact, abs=1e-12)
