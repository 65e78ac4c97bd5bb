"""Figures of evaluation: confusion matrices, validation curves of several runs, reference check."""
import matplotlib

matplotlib.use("Agg")  # plots are files; never open a window
import matplotlib.pyplot as plt
import numpy as np

from ferkeras import CLASSES
from ferkeras.errors import atomic_path


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def _draw_confusion(ax, counts, title, row_label="true", col_label="predicted"):
    """Colours are row-normalised (recall per true class) so rare classes stay readable; cells show
    the raw counts."""
    counts = np.asarray(counts)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(CLASSES))
    ax.set_xticks(ticks, CLASSES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASSES)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if shares[i, j] > 0.5 else "black")


def plot_confusion(counts, path, title):
    fig, ax = plt.subplots(figsize=(7, 6))
    _draw_confusion(ax, counts, title)
    fig.tight_layout()
    _save(fig, path)


def plot_val_curves(curves, path):
    """Overlay validation accuracy per epoch; `curves` is a list of (name, (epochs, accuracies))."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (epochs, accuracy) in curves:
        ax.plot(epochs, accuracy, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy per run")
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_reference_check(f1_by_model, disagreement, path, title):
    """Per-class F1 of each model side by side, and where the two models disagree."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 6))
    width = 0.8 / max(len(f1_by_model), 1)
    x = np.arange(len(CLASSES))
    for i, (name, f1) in enumerate(f1_by_model.items()):
        left.bar(x + i * width, [np.nan if v is None else v for v in f1], width, label=name)
    left.set_xticks(x + width * (len(f1_by_model) - 1) / 2, CLASSES, rotation=45, ha="right")
    left.set_ylim(0, 1)
    left.set_ylabel("F1")
    left.set_title("per-class F1")
    left.grid(axis="y", alpha=0.3)
    left.legend()
    if disagreement is not None:
        _draw_confusion(right, disagreement, "where they disagree", row_label="reference", col_label="ours")
    else:
        right.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
