"""The held-out report of a noise classifier: per noise level, can it tell clean from corrupted, and are its
probabilities calibrated? Every classifier is checked on data it did not train on before it annotates anything.

Per report level s (a subset of the annotation grid) and for held-out clean (S_G) and corrupted (S_B) samples,
with p_i(s) = E_z[c(y_i + s z, s)] averaged over the draws (what eq. 3.2 thresholds):
  auc, auc_lo, auc_hi  ROC AUC of p_i(s) between the classes (Mann-Whitney), with a simultaneous confidence
                       interval over all report levels (DeLong variance, Bonferroni over the levels);
  accuracy             balanced accuracy of the rule p >= 1/2;
  p_clean, p_corrupted mean P(clean) of each class, raw and after the per-level calibration (calibration.py).
A calibrated classifier with balanced training gives both classes a mean near 1/2 where it cannot tell them
apart (Theorem 4.2's regime); a mean away from 1/2 there is miscalibration that would move the paper's fixed
threshold tau = 0.5 - eps.

Two decisions read off the report:
  informative  some level at low noise (s <= sigma_data) has an AUC interval above 1/2: the classifier sees the
               corruption where it matters. If not, a per-sample sigma_min from it would be noise read as quality.
  chance_from  the lowest report level from which every level's interval contains 1/2: there the two sets are
               indistinguishable to the classifier, so every sample may be used (sigma_min is capped there).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import torch

REPORT_LEVELS = 33  # levels of the annotation grid the report scores (every 8th of 256)


def midranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank (float64)."""
    values = values.double().reshape(-1)
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    # Each tie group [start, end) gets rank (start + 1 + end) / 2.
    new_group = torch.ones_like(ordered, dtype=torch.bool)
    new_group[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    starts = torch.nonzero(new_group).flatten()
    ends = torch.cat([starts[1:], torch.tensor([ordered.numel()])])
    group_rank = (starts + 1 + ends).double() / 2
    ranks = torch.empty_like(values)
    ranks[order] = group_rank[group]
    return ranks


def auc_with_variance(positive: torch.Tensor, negative: torch.Tensor) -> tuple[float, float]:
    """(AUC, its DeLong variance) for scores of positives (clean) and negatives (corrupted); ties count 1/2.

    AUC = P(score of a random positive > that of a random negative). DeLong et al. (1988): with
    V10_i = fraction of negatives below positive i and V01_j = fraction of positives above negative j,
    Var(AUC) = var(V10) / m + var(V01) / n, computed from midranks in O((m + n) log(m + n)).
    """
    m, n = positive.numel(), negative.numel()
    if m == 0 or n == 0:
        return math.nan, math.nan
    ranks = midranks(torch.cat([positive.reshape(-1), negative.reshape(-1)]))
    v10 = (ranks[:m] - midranks(positive)) / n
    v01 = 1.0 - (ranks[m:] - midranks(negative)) / m
    auc = float(v10.mean())
    variance = (float(v10.var()) / m if m > 1 else 0.0) + (float(v01.var()) / n if n > 1 else 0.0)
    return auc, variance


def report_indices(levels: int, count: int = REPORT_LEVELS) -> torch.Tensor:
    """Grid indices the report scores: `count` evenly spaced indices including both ends."""
    return torch.linspace(0, levels - 1, min(count, levels)).round().long().unique()


@dataclass
class ClassifierReport:
    """Columns per report level (JSON-friendly lists); see the module docstring."""

    sigmas: list[float]
    n_clean: int
    n_corrupted: int
    auc: list[float]
    auc_lo: list[float]
    auc_hi: list[float]
    accuracy: list[float]
    p_clean: list[float]
    p_corrupted: list[float]
    p_clean_calibrated: list[float] = field(default_factory=list)
    p_corrupted_calibrated: list[float] = field(default_factory=list)
    confidence: float = 0.95  # family-wise over the levels
    draws: int = 1
    folds: int = 1
    scoring: str = "out-of-fold"  # how the held-out scores were obtained
    sigma_data: float = 0.5

    # -------------------------------------------------------------------------------------------- decisions
    @property
    def informative(self) -> bool:
        """Some level with s <= sigma_data has an AUC interval entirely above 1/2."""
        return any(lo > 0.5 for s, lo in zip(self.sigmas, self.auc_lo) if s <= self.sigma_data)

    @property
    def best_low_noise_auc(self) -> float:
        low = [a for s, a in zip(self.sigmas, self.auc) if s <= self.sigma_data]
        return max(low) if low else math.nan

    @property
    def chance_from(self) -> float | None:
        """The lowest report level from which every level's AUC interval contains 1/2; None when the highest
        level is not at chance (the classifier still tells the sets apart at the top of the grid)."""
        level = None
        for s, lo in zip(reversed(self.sigmas), reversed(self.auc_lo)):
            if lo > 0.5:
                break
            level = s
        return level

    def warnings(self) -> list[str]:
        notes = []
        if not self.informative:
            notes.append(f"the classifier is at chance at low noise: no level s <= {self.sigma_data:g} has an AUC "
                         f"interval above 0.5 (best AUC {self.best_low_noise_auc:.3f}); a per-sample sigma_min from "
                         "it would be noise. Train longer, at lower levels, or a larger classifier; or check that the "
                         "corrupted images really differ from the clean ones")
        if self.chance_from is None:
            notes.append("the classifier tells the sets apart even at the highest level: check the data (different "
                         "brightness or colour statistics are visible at any noise level)")
        return notes

    # ---------------------------------------------------------------------------------------------- output
    def table(self) -> str:
        """The report as a text table, one row per level."""
        calibrated = bool(self.p_clean_calibrated)
        header = (f"held-out report ({self.scoring}, {self.folds} fold(s), {self.n_clean} clean / {self.n_corrupted} "
                  f"corrupted samples, {self.draws} draw(s); AUC intervals: {self.confidence:.0%} simultaneous)")
        columns = f"{'sigma':>9}  {'AUC':>6}  {'interval':>13}  {'acc':>5}  {'P(clean): clean':>15}  {'corrupted':>9}"
        if calibrated:
            columns += f"  {'calibrated: clean':>17}  {'corrupted':>9}"
        lines = [header, columns]
        for i, s in enumerate(self.sigmas):
            line = (f"{s:>9.4g}  {self.auc[i]:>6.3f}  [{self.auc_lo[i]:.3f}, {self.auc_hi[i]:.3f}]  "
                    f"{self.accuracy[i]:>5.3f}  {self.p_clean[i]:>15.3f}  {self.p_corrupted[i]:>9.3f}")
            if calibrated:
                line += f"  {self.p_clean_calibrated[i]:>17.3f}  {self.p_corrupted_calibrated[i]:>9.3f}"
            lines.append(line + ("  <- chance" if self.auc_lo[i] <= 0.5 else ""))
        chance = self.chance_from
        lines.append(f"informative at low noise: {'yes' if self.informative else 'NO'}; at chance from sigma "
                     f"{'(never)' if chance is None else f'{chance:.4g}'}")
        lines.extend(f"WARNING: {note}" for note in self.warnings())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ClassifierReport:
        return cls(**values)


def build_report(sigmas: torch.Tensor, p_clean: torch.Tensor, p_corrupted: torch.Tensor, *,
                 p_clean_calibrated: torch.Tensor | None = None, p_corrupted_calibrated: torch.Tensor | None = None,
                 confidence: float = 0.95, draws: int = 1, folds: int = 1, scoring: str = "out-of-fold",
                 sigma_data: float = 0.5) -> ClassifierReport:
    """The report from held-out per-sample probabilities p [n_class, levels] (p_i(s), averaged over draws)."""
    levels = sigmas.numel()
    # Bonferroni: each level's interval at 1 - (1 - confidence) / levels, so all hold together with `confidence`.
    z = NormalDist().inv_cdf(1 - (1 - confidence) / (2 * levels))
    auc, lo, hi, accuracy = [], [], [], []
    for j in range(levels):
        value, variance = auc_with_variance(p_clean[:, j], p_corrupted[:, j])
        half = z * math.sqrt(max(variance, 0.0))
        auc.append(value)
        lo.append(max(0.0, value - half))
        hi.append(min(1.0, value + half))
        accuracy.append(0.5 * float((p_clean[:, j] >= 0.5).double().mean() + (p_corrupted[:, j] < 0.5).double().mean()))

    def means(p):
        return [] if p is None else p.double().mean(dim=0).tolist()

    return ClassifierReport(
        sigmas=sigmas.double().tolist(), n_clean=int(p_clean.shape[0]), n_corrupted=int(p_corrupted.shape[0]),
        auc=auc, auc_lo=lo, auc_hi=hi, accuracy=accuracy, p_clean=means(p_clean), p_corrupted=means(p_corrupted),
        p_clean_calibrated=means(p_clean_calibrated), p_corrupted_calibrated=means(p_corrupted_calibrated),
        confidence=confidence, draws=draws, folds=folds, scoring=scoring, sigma_data=sigma_data)


def plot_report(report: ClassifierReport, path, *, title: str = "noise classifier, held-out") -> list[str]:
    """Figure: mean P(clean) per class vs sigma (raw and calibrated) and AUC with its interval vs sigma.
    Writes `path` (PNG) and the same figure as SVG beside it (ambient_fast.figures); returns the paths written."""
    from ..figures import grid, new_figure, save_figure

    sigmas = report.sigmas
    figure, axes = new_figure(10, 3.8, columns=2)
    left, right = axes[0]
    left.semilogx(sigmas, report.p_clean, color="tab:blue", label="clean (raw)")
    left.semilogx(sigmas, report.p_corrupted, color="tab:red", label="corrupted (raw)")
    if report.p_clean_calibrated:
        left.semilogx(sigmas, report.p_clean_calibrated, color="tab:blue", linestyle="--", label="clean (calibrated)")
        left.semilogx(sigmas, report.p_corrupted_calibrated, color="tab:red", linestyle="--",
                      label="corrupted (calibrated)")
    left.axhline(0.5, color="gray", linewidth=0.8)
    left.set(xlabel="noise level sigma", ylabel="mean P(clean | x_sigma)", ylim=(0, 1),
             title="calibration: mean P(clean) per class")
    left.legend(fontsize=8)
    right.fill_between(sigmas, report.auc_lo, report.auc_hi, color="tab:green", alpha=0.25,
                       label=f"{report.confidence:.0%} simultaneous interval")
    right.semilogx(sigmas, report.auc, color="tab:green", label="AUC")
    right.axhline(0.5, color="gray", linewidth=0.8)
    if report.chance_from is not None:
        right.axvline(report.chance_from, color="black", linestyle=":", label=f"at chance from {report.chance_from:.3g}")
    right.set(xlabel="noise level sigma", ylabel="ROC AUC (clean vs corrupted)", ylim=(0.4, 1.02),
              title="separability")
    right.legend(fontsize=8)
    for axis in (left, right):
        grid(axis)
    figure.suptitle(f"{title}: {report.n_clean} clean / {report.n_corrupted} corrupted, {report.scoring}")
    return [str(p) for p in save_figure(figure, path)]
