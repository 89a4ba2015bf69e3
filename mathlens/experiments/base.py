"""An Experiment puts one claim to a controlled, multi-seed test.

It declares its source (paper / document and statement), its groups (treatment and controls), the
pre-registered prediction, the method, and the rule that turns the measured statistic — with a 95 %
confidence interval over seeds — into a verdict: supported, contradicted or inconclusive.
Verdicts are computed by the rules below, never written by hand.

The interval is Student's t over the per-seed values (paired by seed for a difference of two conditions
measured on the same seeds): suites run 3–5 seeds, and a percentile bootstrap of 3 values is their range,
a ~74 % interval (see :mod:`mathlens.stats`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mathlens.errors import MathlensError
from mathlens.stats import CI, paired_t_ci, t_ci, welch_ci

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"


@dataclass
class Outcome:
    """What an experiment measured: the main statistic with its CI, the verdict and the rule used."""

    statistic: str
    ci: CI
    verdict: str
    rule: str
    groups: dict[str, list[float]] = field(default_factory=dict)  # per-group values, one per seed
    numbers: dict = field(default_factory=dict)  # everything else worth keeping
    figure: str | None = None  # file name under the run's figures/

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = self.ci.to_dict()
        return d


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _classify(ci: CI, supported: bool, contradicted: bool) -> str:
    """The verdict of a rule's two conditions on ``ci``; one value has no interval (``t_ci`` returns the point), so
    a single seed is never decisive."""
    if ci.n < 2:
        return INCONCLUSIVE
    return SUPPORTED if supported else CONTRADICTED if contradicted else INCONCLUSIVE


def verdict_below(values, threshold: float, what: str = "statistic") -> tuple[CI, str, str]:
    """Prediction: the mean of ``values`` lies below ``threshold``."""
    ci = t_ci(values)
    v = _classify(ci, ci.high < threshold, ci.low > threshold)
    rule = (f"supported if the 95% CI of the mean {what} [{_fmt(ci.low)}, {_fmt(ci.high)}] lies below {_fmt(threshold)}; "
            f"contradicted if it lies above; inconclusive otherwise")
    return ci, v, rule


def verdict_above(values, threshold: float, what: str = "statistic") -> tuple[CI, str, str]:
    """Prediction: the mean of ``values`` lies above ``threshold``."""
    ci = t_ci(values)
    v = _classify(ci, ci.low > threshold, ci.high < threshold)
    rule = (f"supported if the 95% CI of the mean {what} [{_fmt(ci.low)}, {_fmt(ci.high)}] lies above {_fmt(threshold)}; "
            f"contradicted if it lies below; inconclusive otherwise")
    return ci, v, rule


def verdict_within(values, low: float, high: float, what: str = "statistic") -> tuple[CI, str, str]:
    """Prediction: the mean of ``values`` lies in [low, high] (e.g. a convergence order 1 ± 0.15)."""
    ci = t_ci(values)
    v = _classify(ci, low <= ci.low and ci.high <= high, ci.high < low or ci.low > high)
    rule = (f"supported if the 95% CI of the mean {what} [{_fmt(ci.low)}, {_fmt(ci.high)}] lies inside "
            f"[{_fmt(low)}, {_fmt(high)}]; contradicted if disjoint from it; inconclusive otherwise")
    return ci, v, rule


def verdict_difference(treatment, control, direction: str = ">", what: str = "treatment − control",
                       paired: bool = True) -> tuple[CI, str, str]:
    """Prediction: mean(treatment) − mean(control) is > 0 (``direction=">"``) or < 0 (``"<"``).

    ``paired``: ``treatment[i]`` and ``control[i]`` come from the same seed (paired t interval of the
    per-seed differences); otherwise independent groups (Welch). Supported when the 95 % CI of the
    difference excludes 0 on the predicted side, contradicted when it excludes 0 on the other side,
    inconclusive when the groups do not differ beyond the CI.
    """
    if direction not in (">", "<"):
        raise MathlensError(f"direction must be '>' or '<', got {direction!r}")
    ci = paired_t_ci(treatment, control) if paired else welch_ci(treatment, control)
    sign = 1 if direction == ">" else -1
    v = _classify(ci, ci.excludes(0.0) and sign * ci.estimate > 0, ci.excludes(0.0))
    rule = (f"supported if the 95% CI of {what} [{_fmt(ci.low)}, {_fmt(ci.high)}] excludes 0 with sign {direction} 0; "
            f"contradicted if it excludes 0 with the other sign; inconclusive if it contains 0")
    return ci, v, rule


class Experiment:
    """Subclasses set the declarative fields and implement :meth:`run` (returning an :class:`Outcome`)."""

    number: int = 0
    key: str = ""
    title: str = ""
    claim: str = ""
    source: str = ""
    prediction: str = ""
    method: str = ""
    groups: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.number:02d}-{self.key}"

    def describe(self) -> dict:
        return {"id": self.id, "number": self.number, "title": self.title, "claim": self.claim,
                "source": self.source, "prediction": self.prediction, "method": self.method,
                "groups": list(self.groups), "probes": list(self.probes)}

    def run(self, ctx) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError


def combine_verdicts(*verdicts: str) -> str:
    """All parts supported -> supported; any part contradicted -> contradicted; otherwise inconclusive."""
    if all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return INCONCLUSIVE
