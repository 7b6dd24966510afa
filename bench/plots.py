"""PNG plots for the report (matplotlib, Agg): latency, accuracy vs latency, training curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#393b79", "#ad494a"]  # 12: a bench can have 11 rows (optimum teacher, floor)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def latency_plot(results: dict[str, Any], out: Path) -> Path | None:
    """Horizontal bars: p50 per artifact, one bar per target, p90 as a whisker; one panel per shape."""
    rows = _ok(results["rows"])
    if not rows:
        return None
    plt = _plt()
    shapes = sorted({(r["batch"], r["seq"]) for r in rows}, key=lambda bs: (bs[1] is None, bs[0], bs[1] or 0))
    targets = [t["name"] for t in results["config"]["targets"]]
    arts = [a["key"] for a in results["artifacts"]]
    labels = {a["key"]: a["label"] for a in results["artifacts"]}
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.5 * len(shapes), 1.0 + 0.55 * len(arts) * max(1, len(targets)) ** 0.5),
                             squeeze=False)
    height = 0.8 / max(1, len(targets))
    for ax, (b, s) in zip(axes[0], shapes):
        top, seen = 0.0, set()
        for ti, t in enumerate(targets):
            for ai, a in enumerate(arts):
                r = next((r for r in rows if r["artifact"] == a and r["target"] == t and r["batch"] == b and r["seq"] == s), None)
                if r is None:
                    continue
                p50, p90 = r["latency_ms"]["p50"], r["latency_ms"]["p90"]
                y = ai + (ti - (len(targets) - 1) / 2) * height
                ax.barh(y, p50, height=height * 0.9, color=_COLOURS[ti % len(_COLOURS)],
                        xerr=[[0], [max(0.0, p90 - p50)]], capsize=2, label=None if t in seen else t)
                seen.add(t)
                ax.text(p90 * 1.04, y, f"{p50:.3g} ms", va="center", fontsize=8)
                top = max(top, p90)
        ax.set_yticks(range(len(arts)))
        ax.set_yticklabels([labels[a] for a in arts])
        ax.invert_yaxis()
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlim(right=top * 2.2 if top else None)
        ax.set_xlabel("latency per batch, ms (log scale; bar = p50, whisker = p90)")
        ax.set_title(f"batch {b}, sequence {s}" if s is not None else "real test texts, one at a time, own length")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.legend(title="target", loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plain_log_ticks(ax) -> None:
    """Label only the decades, as plain numbers (minor labels like 3x10^-1 collide)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def pareto_front(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points (latency, accuracy, name) no other point beats on both: lower latency, higher accuracy."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if p[1] > best:
            front.append(p)
            best = p[1]
    return front


def accuracy_latency_plot(results: dict[str, Any], out: Path) -> Path | None:
    """Test accuracy vs p50 latency on the real test texts (what an app sees; else the first fixed shape): one
    panel per target, one colour per artifact (legend with macro-F1, no overlapping labels), the Pareto front
    over every row (TF-IDF floor and the teacher's optimum int8 included) circled and joined."""
    acc = {a["key"]: (a["accuracy"] or {}).get("accuracy") for a in results["artifacts"]}
    f1 = {a["key"]: (a["accuracy"] or {}).get("macro_f1") for a in results["artifacts"]}
    arts = [a for a in results["artifacts"] if acc[a["key"]] is not None]
    texts = [r for r in _ok(results["rows"]) if r["seq"] is None and acc.get(r["artifact"]) is not None]
    b, s = results["config"]["batch"][0], results["config"]["seq"][0]
    rows = texts or [r for r in _ok(results["rows"]) if r["batch"] == b and r["seq"] == s
                     and acc.get(r["artifact"]) is not None]
    if not rows:
        return None
    plt = _plt()
    targets = [t["name"] for t in results["config"]["targets"] if any(r["target"] == t["name"] for r in rows)]
    colour = {a["key"]: _COLOURS[i % len(_COLOURS)] for i, a in enumerate(arts)}
    marker = {a["key"]: {"pytorch": "s", "tfidf": "^"}.get(a["runtime"], "o") for a in arts}
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets) + 2.8, 4.8), squeeze=False, sharey=True)
    ys = [100 * acc[r["artifact"]] for r in rows]
    pad = max(1.0, (max(ys) - min(ys)) * 0.25)
    for ax, t in zip(axes[0], targets):
        pts = [(r["latency_ms"]["p50"], 100 * acc[r["artifact"]], r["artifact"]) for r in rows if r["target"] == t]
        front = pareto_front(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="black", alpha=0.5, linestyle="--", zorder=1)
        ax.scatter([p[0] for p in front], [p[1] for p in front], facecolors="none", edgecolors="black", s=220,
                   zorder=2, label="Pareto front")
        for x, y, k in pts:
            name = next(a["label"] for a in arts if a["key"] == k)
            ax.scatter([x], [y], color=colour[k], marker=marker[k], s=70, zorder=3,
                       label=f"{name} (macro-F1 {f1[k]:.3f})" if f1.get(k) is not None else name)
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
        ax.set_xlim(lo / 1.6, hi * 1.6)
        ax.set_ylim(min(ys) - pad, max(ys) + pad)
        ax.set_title(f"target {t}")
        ax.set_xlabel("p50 latency, ms (log scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test accuracy, %")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=True)
    fig.suptitle("Accuracy vs latency, " + ("real test texts one at a time" if texts else f"batch {b} x sequence {s}")
                 + " (up and left is better)")
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * len(targets) + 2.8), 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def training_plot(train_log: Path, out: Path) -> Path | None:
    """Loss (and eval metrics when logged) per step, one line per stage, from logs/train.jsonl."""
    if not train_log.exists():
        return None
    recs = []
    for line in train_log.read_text(encoding="utf-8").splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue
    series: dict[str, list[tuple[float, float]]] = {}
    for r in recs:
        step = r.get("step", r.get("epoch"))
        if step is None:
            continue
        for metric in ("loss", "eval_loss", "eval_accuracy"):
            if isinstance(r.get(metric), (int, float)):
                series.setdefault(f"{r.get('stage', 'train')} {metric}", []).append((step, r[metric]))
    if not series:
        return None
    plt = _plt()
    has_acc = any(k.endswith("accuracy") for k in series)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(12 if has_acc else 7, 4.5), squeeze=False)
    for i, (name, pts) in enumerate(sorted(series.items())):
        ax = axes[0][1] if name.endswith("accuracy") else axes[0][0]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None, markersize=3,
                label=name, color=_COLOURS[i % len(_COLOURS)])
    axes[0][0].set_title("training and validation loss")
    axes[0][0].set_ylabel("loss")
    if has_acc:
        axes[0][1].set_title("validation accuracy")
        axes[0][1].set_ylabel("accuracy")
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
