"""Training curves: loss, accuracy and learning rate per epoch, read back from training.csv."""
import matplotlib

matplotlib.use("Agg")  # plots are files; never open a window
import matplotlib.pyplot as plt
import pandas as pd

from ferkeras.errors import atomic_path


def plot_training_curves(csv_path, png_path, title=None):
    history = pd.read_csv(csv_path)
    if history.empty:
        return
    epochs = history["epoch"] + 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, metric in zip(axes[:2], ("loss", "accuracy")):
        ax.plot(epochs, history[metric], marker="o", label=f"train {metric}")
        if f"val_{metric}" in history:
            ax.plot(epochs, history[f"val_{metric}"], marker="o", label=f"valid {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if "learning_rate" in history:
        axes[2].plot(epochs, history["learning_rate"], marker="o", color="tab:green")
        axes[2].set_yscale("log")
    axes[2].set_xlabel("epoch")
    axes[2].set_title("learning rate")
    axes[2].grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
