"""Figures of the attention probes (matplotlib, Agg backend; every function returns a ``Figure``)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mathlens.probes.attention_stats import cumulative_energy  # noqa: E402

PROFILE_STATS = ("normalised_entropy", "effective_rank_ratio", "stable_rank", "gini")


def plot_layer_profiles(summary, stats=PROFILE_STATS):
    """Per-layer means over heads of each statistic (trained vs random init), plus the rank-collapse ratio ρ."""
    fig, axes = plt.subplots(1, len(stats) + 1, figsize=(3.2 * (len(stats) + 1), 3), squeeze=False)
    runs = [("trained", summary.trained, "C0")] + ([("random init", summary.random, "C1")] if summary.random else [])
    for ax, stat in zip(axes[0], stats):
        for label, m, color in runs:
            prof = m.layer_mean(stat)
            ax.plot(list(prof), list(prof.values()), "o-", color=color, label=label)
        ax.set_title(stat.replace("_", " "))
        ax.set_xlabel("layer")
    ax = axes[0][-1]
    for label, m, color in runs:
        ax.plot(range(len(m.rank_collapse)), m.rank_collapse, "o-", color=color, label=label)
    ax.set_title("residual ratio ρ (0 = embedding)")
    ax.set_xlabel("state")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_head_heatmap(summary, stat: str = "normalised_entropy"):
    """Layers × heads heat map of ``stat`` for the trained model (and the random baseline beside it)."""
    runs = [("trained", summary.trained)] + ([("random init", summary.random)] if summary.random else [])
    fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), squeeze=False)
    for ax, (label, m) in zip(axes[0], runs):
        layers = sorted({h.layer for h in m.heads})
        heads = sorted({h.head for h in m.heads})
        grid = np.full((len(layers), len(heads)), np.nan)
        for h in m.heads:
            grid[layers.index(h.layer), heads.index(h.head)] = getattr(h, stat)
        im = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(heads)), heads)
        ax.set_yticks(range(len(layers)), layers)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{stat.replace('_', ' ')} ({label})")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_spectra(P, labels=None, title: str = "cumulative singular-value energy"):
    """``P: (h, n, n)`` or ``(B, h, n, n)`` (batch-averaged): C(k) against k/n per head (Linformer's plot)."""
    C = cumulative_energy(torch.as_tensor(P))
    if C.dim() == 3:
        C = C.mean(0)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    n = C.shape[-1]
    x = np.arange(1, n + 1)
    for j in range(C.shape[0]):
        ax.plot(x, C[j].numpy(), label=None if labels is None else labels[j])
    ax.set_xlabel("k")
    ax.set_ylabel("C(k)")
    ax.set_title(title)
    if labels is not None:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
