"""`edge_chat bench --plot`: bar charts of the results (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from edge_chat.errors import EdgeChatError


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[:n // 2 - 1] + "…" + name[-(n // 2):]


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise EdgeChatError("--plot needs matplotlib: pip install matplotlib "
                            "(or the project's dev extra)", param="plot") from None


def plot(results: list[dict], file: Path) -> Path:
    """Bars per model: prefill, decode, TTFT per prompt length; load, peak RSS, 2nd turn."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "error" not in r]
    if not ok:
        raise EdgeChatError("nothing to plot: every model failed")
    lengths = sorted({ln["prompt_tokens"] for r in ok for ln in r["lengths"]})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    width = 0.8 / len(ok)
    for ax, key, title in zip(axes[0], ("prefill_tps", "decode_tps", "ttft"),
                              ("prefill tok/s", "decode tok/s", "time to first token (s)")):
        for j, r in enumerate(ok):
            by = {ln["prompt_tokens"]: ln[key] for ln in r["lengths"]}
            xs = [i + j * width for i, n in enumerate(lengths) if n in by]
            ss = [by[n] for n in lengths if n in by]
            ax.bar(xs, [s["median"] for s in ss], width, label=r["model"],
                   yerr=[[s["median"] - s["min"] for s in ss], [s["max"] - s["median"] for s in ss]])
        ax.set_xticks([i + width * (len(ok) - 1) / 2 for i in range(len(lengths))])
        ax.set_xticklabels([f"{n} tok" for n in lengths])
        ax.set_title(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(ok), 4), fontsize=9)
    names = [_short(r["model"]) for r in ok]
    axes[1][0].bar(names, [r["load_s"] for r in ok])
    axes[1][0].set_title("load time (s)")
    axes[1][1].bar(names, [r["peak_rss"] / 1e6 for r in ok], label="peak RSS")
    axes[1][1].bar(names, [r["size_bytes"] / 1e6 for r in ok], width=0.4, label="model file")
    axes[1][1].set_title("memory (MB)")
    axes[1][1].legend(fontsize=8)
    st = [(r["model"], r["second_turn"]) for r in ok if r.get("second_turn")]
    for j, label in enumerate(("first_ttft", "second_ttft")):
        axes[1][2].bar([i + j * 0.4 for i in range(len(st))], [s[label]["median"] for _, s in st],
                       0.4, label=label.replace("_", " "))
    axes[1][2].set_xticks([i + 0.2 for i in range(len(st))])
    axes[1][2].set_xticklabels([_short(n) for n, _ in st])
    axes[1][2].set_title("TTFT (s): turn 1 vs turn 2 (prefix reuse)")
    axes[1][2].legend(fontsize=8)
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(file, dpi=100)
    plt.close(fig)
    return file
