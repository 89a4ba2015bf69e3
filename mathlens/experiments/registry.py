"""All experiments, in claim order."""

from __future__ import annotations


def all_experiments():
    from mathlens.experiments import (
        attention_claims,
        flow_claims,
        geometry_claims,
        hallucination_claims,
        landscape_claims,
    )

    exps = []
    for module in (flow_claims, attention_claims, landscape_claims, geometry_claims, hallucination_claims):
        exps += [cls() for cls in module.EXPERIMENTS]
    return sorted(exps, key=lambda e: e.number)
