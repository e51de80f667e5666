"""The report card's two judgements: the position against a relation (an interval) and the γ rule."""

import math

import numpy as np
import pytest
from scipy import stats

from irepa.analysis.report_card import position_on_relation, published_relation, recommend_gamma
from irepa.errors import IrepaError


def test_published_relation_is_the_papers_quoted_points():
    relation = published_relation()
    points = dict(zip(relation["names"], zip(relation["x"], relation["y"])))
    assert points["PE-Core-G"] == (0.08, 32.3) and points["DINOv2-B"] == (0.4, 19.3)  # paper-notes §5.1
    assert relation["published_r"] == -0.852 and relation["published_n"] == 27


def test_prediction_interval_by_hand():
    relation = {"x": [0.1, 0.2, 0.3, 0.4], "y": [30.0, 27.0, 21.0, 20.0], "measure": "lds", "names": list("abcd")}
    pos = position_on_relation(0.25, relation)
    fit = stats.linregress(relation["x"], relation["y"])
    x = np.array(relation["x"])
    residual_sd = math.sqrt(((np.array(relation["y"]) - (fit.intercept + fit.slope * x)) ** 2).sum() / 2)
    half = (
        stats.t.ppf(0.975, 2)
        * residual_sd
        * math.sqrt(1 + 1 / 4 + (0.25 - x.mean()) ** 2 / ((x - x.mean()) ** 2).sum())
    )
    centre = fit.intercept + fit.slope * 0.25
    assert pos["interval"] == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert pos["inside_range"] and not position_on_relation(0.9, relation)["inside_range"]


def test_gamma_rule_by_hand():
    gammas, lds = [0.0, 0.6, 0.8, 1.0], [0.1, 0.2, 0.3, 0.4]
    assert recommend_gamma(gammas, lds, rmsc=0.5)["gamma"] == 0.8  # shared share 1 - 0.25 = 0.75: top of the range
    assert recommend_gamma(gammas, lds, rmsc=0.9)["gamma"] == 0.6  # share 0.19: little to remove
    middle = recommend_gamma(gammas, lds, rmsc=math.sqrt(0.5))  # share 0.5: halfway
    assert middle["gamma"] == 0.7 and middle["global_share"] == pytest.approx(0.5)
    assert recommend_gamma(gammas, lds, rmsc=0.5)["lds_gain"] == pytest.approx(0.2)  # LDS(0.8) - LDS(0)
    with pytest.raises(IrepaError, match="include 0"):
        recommend_gamma([0.5, 1.0], [0.1, 0.2], rmsc=0.5)
