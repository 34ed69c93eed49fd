"""The held-out classifier report: midranks and the AUC with its DeLong variance against brute-force float64
references on fresh random scores, the decisions read off the report (informative, chance_from), and its outputs
(text table, JSON round trip, PNG + SVG figure)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from ambient_fast.annotate.report import (ClassifierReport, auc_with_variance, build_report, midranks, plot_report,
                                          report_indices)


def brute_force_auc_and_delong(positive: torch.Tensor, negative: torch.Tensor) -> tuple[float, float]:
    """O(m n) definitions: psi(x, y) = 1 if x > y, 1/2 if equal; V10_i = mean_j psi(x_i, y_j),
    V01_j = mean_i psi(x_i, y_j); AUC = mean V10; Var = var(V10)/m + var(V01)/n (DeLong et al. 1988)."""
    x, y = positive.double().tolist(), negative.double().tolist()
    psi = [[1.0 if a > b else 0.5 if a == b else 0.0 for b in y] for a in x]
    v10 = torch.tensor([sum(row) / len(y) for row in psi], dtype=torch.float64)
    v01 = torch.tensor([sum(psi[i][j] for i in range(len(x))) / len(x) for j in range(len(y))], dtype=torch.float64)
    if len(x) < 2 or len(y) < 2:
        return float(v10.mean()), math.nan
    return float(v10.mean()), float(v10.var() / len(x) + v01.var() / len(y))


def test_midranks_average_ties():
    values = torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 0.5])
    assert midranks(values).tolist() == [5.0, 2.0, 5.0, 3.0, 5.0, 1.0]
    fresh = torch.randint(0, 5, (200,)).double()
    ranks = midranks(fresh)
    for value in fresh.unique().tolist():  # a tie group gets the mean of the ranks it spans
        below = int((fresh < value).sum())
        equal = int((fresh == value).sum())
        assert torch.all(ranks[fresh == value] == below + (equal + 1) / 2)


@pytest.mark.parametrize("m, n, ties", [(1, 1, False), (7, 3, False), (40, 25, True), (60, 90, False)])
def test_auc_and_variance_match_the_brute_force_definitions(m, n, ties):
    generator = torch.Generator().manual_seed(m * 1000 + n)
    positive = torch.randn(m, generator=generator) + 0.7
    negative = torch.randn(n, generator=generator)
    if ties:  # rounded scores: many ties within and across the classes
        positive, negative = (positive * 2).round(), (negative * 2).round()
    auc, variance = auc_with_variance(positive, negative)
    expected_auc, expected_variance = brute_force_auc_and_delong(positive, negative)
    assert auc == pytest.approx(expected_auc, abs=1e-12)
    if m > 1 and n > 1:
        assert variance == pytest.approx(expected_variance, rel=1e-9, abs=1e-15)


def test_auc_of_separated_and_identical_scores():
    assert auc_with_variance(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == (1.0, 0.0)
    assert auc_with_variance(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0]))[0] == 0.0
    assert auc_with_variance(torch.full((5,), 0.3), torch.full((4,), 0.3))[0] == 0.5
    assert math.isnan(auc_with_variance(torch.tensor([]), torch.tensor([1.0]))[0])


def test_interval_covers_the_true_auc_at_about_the_nominal_rate():
    """Two normal classes with shift d: AUC = Phi(d / sqrt 2). A 90% interval (one level) covers it in roughly 90%
    of repetitions (DeLong is asymptotic: 80-97% accepted over 200 repetitions of 60 vs 80 samples)."""
    d = 0.8
    true_auc = 0.5 * (1 + math.erf(d / 2))
    generator = torch.Generator().manual_seed(0)
    covered = 0
    for _ in range(200):
        report = build_report(torch.tensor([1.0]), (torch.randn(60, 1, generator=generator) + d),
                              torch.randn(80, 1, generator=generator), confidence=0.9)
        covered += report.auc_lo[0] <= true_auc <= report.auc_hi[0]
    assert 160 <= covered <= 194, covered


def columns(aucs, halfwidth=0.05, sigmas=None):
    sigmas = sigmas or [0.01 * 3**i for i in range(len(aucs))]
    return ClassifierReport(sigmas=sigmas, n_clean=10, n_corrupted=10, auc=aucs,
                            auc_lo=[a - halfwidth for a in aucs], auc_hi=[a + halfwidth for a in aucs],
                            accuracy=aucs, p_clean=[0.5] * len(aucs), p_corrupted=[0.5] * len(aucs))


def test_decisions_read_off_the_report():
    report = columns([0.9, 0.8, 0.7, 0.52, 0.5, 0.53])  # sigmas 0.01 .. 2.43
    assert report.informative and report.chance_from == pytest.approx(0.27)
    at_chance = columns([0.53, 0.5, 0.51, 0.52, 0.5, 0.49])
    assert not at_chance.informative and at_chance.chance_from == pytest.approx(0.01)
    assert "at chance at low noise" in at_chance.warnings()[0]
    # informative only above sigma_data = 0.5 does not count: the corruption must be seen at low noise
    high_only = columns([0.5, 0.5, 0.5, 0.5, 0.9, 0.5])
    assert not high_only.informative and high_only.chance_from == pytest.approx(2.43)
    # a classifier that separates the sets even at the top level never reaches chance
    never = columns([0.9, 0.9, 0.9, 0.9, 0.9, 0.7])
    assert never.chance_from is None and any("highest level" in w for w in never.warnings())


def test_report_table_json_and_figure(tmp_path):
    generator = torch.Generator().manual_seed(1)
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)
    separation = torch.tensor([2.0, 1.0, 0.2, 0.0])
    clean = torch.sigmoid(torch.randn(50, 4, generator=generator) + separation)
    corrupted = torch.sigmoid(torch.randn(70, 4, generator=generator) - separation)
    report = build_report(sigmas, clean, corrupted, p_clean_calibrated=clean, p_corrupted_calibrated=corrupted,
                          draws=2, folds=3)
    assert report.auc[0] > 0.95 and report.auc_lo[0] > 0.5 and report.auc_lo[3] <= 0.5
    assert report.p_clean[0] == pytest.approx(float(clean[:, 0].mean()))
    text = report.table()
    assert "held-out report (out-of-fold, 3 fold(s), 50 clean / 70 corrupted" in text and "<- chance" in text
    assert ClassifierReport.from_dict(report.to_dict()) == report
    written = plot_report(report, tmp_path / "report.png")
    assert [p.endswith(s) for p, s in zip(written, (".png", ".svg"))] == [True, True]
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "report.svg").stat().st_size > 1000


def test_simultaneous_intervals_widen_with_the_number_of_levels():
    generator = torch.Generator().manual_seed(2)
    clean, corrupted = torch.randn(40, 1, generator=generator) + 1, torch.randn(40, 1, generator=generator)
    one = build_report(torch.tensor([1.0]), clean, corrupted)
    many = build_report(torch.ones(20), clean.repeat(1, 20), corrupted.repeat(1, 20))
    assert many.auc[0] == one.auc[0] and many.auc_lo[0] < one.auc_lo[0]


def test_report_indices_cover_the_grid_ends():
    assert report_indices(256).tolist()[:3] == [0, 8, 16] and report_indices(256)[-1] == 255
    assert report_indices(5).tolist() == [0, 1, 2, 3, 4]
    assert list(itertools.pairwise(report_indices(100).tolist())) and report_indices(100)[-1] == 99
