"""Every figure i2pscan draws (matplotlib, an optional dependency, imported only when a plot is
asked for): calibration's importance per layer, evaluation's ROC curves and score histograms."""

from __future__ import annotations

import os

import numpy as np

from i2pscan.errors import MissingDependency


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend; I2PError if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependency("plots need matplotlib: pip install 'i2pscan[plot]'") from exc
    return plt


def calibration(cal, path: str | os.PathLike) -> None:
    """AUC and importance per block as a PNG (needs matplotlib: pip install 'i2pscan[plot]')."""
    plt = pyplot()
    blocks = np.arange(1, cal.num_blocks + 1)
    fig, ax1 = plt.subplots(figsize=(max(6, cal.num_blocks * 0.35), 3.5))
    colors = ["tab:red" if b in cal.critical else "tab:blue" for b in blocks]
    ax1.bar(blocks, cal.importance, color=colors, alpha=0.7, label="importance")
    ax1.set_xlabel("block")
    ax1.set_ylabel("importance")
    ax2 = ax1.twinx()
    ax2.plot(blocks, cal.scores.auc, "k.-", label="held-out AUC")
    ax2.set_ylabel("AUC")
    ax2.set_ylim(min(0.45, float(cal.scores.auc.min()) - 0.02), 1.02)
    ax1.set_title(f"{cal.backbone['name']}: layer importance (red: critical layers S)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluation(result, folder: str, clean: str = "none") -> list[str]:
    """ROC curves and score histograms (real vs fake) per subset, as PNGs in ``folder``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    os.makedirs(folder, exist_ok=True)
    written = []
    for s in result.scores:
        tag = "" if s.perturbation == clean else "-" + s.perturbation.replace(":", "")
        names = sorted(set(s.subsets.tolist()))
        fig, ax = plt.subplots(figsize=(5, 5))
        for name in names:
            sel = s.subsets == name
            if len(set(s.labels[sel].tolist())) == 2:
                fpr, tpr, _ = roc_curve(s.labels[sel], s.logits[sel])
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(s.labels[sel], s.logits[sel]):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlabel("false positive rate (real flagged)")
        ax.set_ylabel("true positive rate (synthetic flagged)")
        ax.set_title("ROC" + ("" if s.perturbation == clean else f" under {s.perturbation}"))
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = os.path.join(folder, f"roc{tag}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            sel = s.subsets == name
            bins = np.linspace(float(s.logits.min()), float(s.logits.max()) + 1e-9, 40)
            ax.hist(s.logits[sel & (s.labels == 0)], bins=bins, alpha=0.6, label="real")
            ax.hist(s.logits[sel & (s.labels == 1)], bins=bins, alpha=0.6, label="fake")
            ax.axvline(result.threshold_logit, color="k", ls="--", lw=0.8, label="threshold")
            ax.set_title(name)
            ax.set_xlabel("logit")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(folder, f"scores{tag}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
