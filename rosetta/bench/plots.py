"""PNG plots beside the JSON: TFLOP/s against N per implementation; training-step bars per backend."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def attention_plot(document: dict, path) -> Path | None:
    """One panel per (d, dtype, pass), causal dashed; None when no row has a figure."""
    rows = [r for r in document["results"] if r.get("tflops")]
    if not rows:
        return None
    plt = _pyplot()
    panels = sorted({(r["d"], r["dtype"], r["pass"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), dpi=100, squeeze=False)
    for ax, (d, dtype, pass_) in zip(axes[0], panels):
        for impl in sorted({r["implementation"] for r in rows}):
            for causal in (False, True):
                pts = sorted((r["N"], r["tflops"]) for r in rows if (r["implementation"], r["d"], r["dtype"],
                             r["pass"], r["causal"]) == (impl, d, dtype, pass_, causal))
                if pts:
                    ax.plot(*zip(*pts), marker="o", linestyle="--" if causal else "-",
                            label=f"{impl}{' causal' if causal else ''}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"d={d} {dtype} {pass_}", fontsize=9)
        ax.set_xlabel("N")
        ax.set_ylabel("TFLOP/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(f"attention on {document['device']['name']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def bars(document: dict, path, label_key: str, title: str) -> Path | None:
    """Median ms/step bars (min–max as error bars), one per row with a figure."""
    rows = [r for r in document["results"] if r.get("median_ms")]
    if not rows:
        return None
    plt = _pyplot()
    labels = [r[label_key] if isinstance(label_key, str) else label_key(r) for r in rows]
    medians = [r["median_ms"] for r in rows]
    errors = [[m - r["min_ms"] for m, r in zip(medians, rows)], [r["max_ms"] - m for m, r in zip(medians, rows)]]
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 4.2), dpi=100)
    ax.bar(range(len(rows)), medians, yerr=errors, capsize=4, color="tab:blue")
    for i, m in enumerate(medians):
        ax.text(i, m, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("ms per training step (median; bars min–max)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def dispatch_plot(document: dict, path) -> Path | None:
    """Kernels per training step and CPU ms per step, a bar per row (the `dispatch` suite)."""
    rows = [r for r in document["results"] if r.get("kernels")]
    if not rows:
        return None
    plt = _pyplot()
    labels = [r["label"].replace(" ", "\n", 1) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    for ax, key, ylabel in ((axes[0], "kernels", "kernels launched per step"),
                            (axes[1], "median_ms", "CPU ms per step (median, 1 thread)")):
        shown = [i for i, r in enumerate(rows) if r.get(key)]  # the emulated CuPy row has no time
        values = [rows[i][key] for i in shown]
        ax.bar(range(len(shown)), values, color=["tab:blue" if "accelerated" in rows[i]["backend"] else "tab:gray"
                                                 for i in shown])
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.0f}" if key == "kernels" else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(shown)), [labels[i] for i in shown], fontsize=7, rotation=25, ha="right")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"one training step's dispatch, base architecture at host-overhead size, {document['device']['name']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
