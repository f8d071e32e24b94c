"""Ground-truth and score checks shared by every statistic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.evaluation.checks import UndefinedStatisticError, binary_truth, finite_scores, require_both_classes


def test_binary_truth_spellings():
    expected = [0, 1, 1, 0]
    assert binary_truth([0, 1, 1, 0]).tolist() == expected
    assert binary_truth([0.0, 1.0, True, False]).tolist() == expected
    assert binary_truth(["Negative", "positive", "POSITIVE", "negative"]).tolist() == expected
    assert binary_truth(pd.Series(["0", "1", "1", "0"])).tolist() == expected
    assert binary_truth(pd.Series(["0.0", "1.0", "1", "0"])).tolist() == expected
    assert binary_truth(["normal", "covid", "covid", "normal"], classes=["normal", "covid"]).tolist() == expected
    assert binary_truth(["normal", "covid", "covid", "normal"], positive="covid").tolist() == expected
    assert binary_truth([2, 5, 5, 2], positive=5).tolist() == expected


def test_binary_truth_errors_name_the_source_and_row():
    with pytest.raises(UserError, match=r"labels.csv column 'y': label 'covid' at row 2"):
        binary_truth(["negative", "covid"], source="labels.csv column 'y'")
    with pytest.raises(UserError, match="1 missing label"):
        binary_truth([0, None, 1])
    with pytest.raises(UserError, match="missing label"):
        binary_truth(["1", "", "0"])
    with pytest.raises(UserError, match="exactly two classes"):
        binary_truth(["a"], classes=["a", "b", "c"])
    with pytest.raises(UserError, match="not one of"):
        binary_truth(["a", "x"], classes=["a", "b"])


def test_finite_scores():
    assert finite_scores([1, 2.5, "3"]).dtype == np.float64
    with pytest.raises(UserError, match="2 NaN score\\(s\\), first at row 2"):
        finite_scores([0.1, np.nan, np.nan])
    with pytest.raises(UserError, match="infinite"):
        finite_scores([0.1, np.inf])
    with pytest.raises(UserError, match="3 scores for 4 labels"):
        finite_scores([0.1, 0.2, 0.3], expected_length=4)
    with pytest.raises(UserError, match="not numeric"):
        finite_scores(["high", "low"])


def test_require_both_classes():
    assert require_both_classes(np.array([1, 0, 0])) == (1, 2)
    with pytest.raises(UndefinedStatisticError, match="no positive"):
        require_both_classes(np.zeros(4, dtype=int))
    with pytest.raises(UndefinedStatisticError, match="only 1 positive"):
        require_both_classes(np.array([1, 0, 0]), minimum=2)
