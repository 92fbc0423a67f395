"""RUN_DIR/metrics.png: what a run's metrics.jsonl says, drawn — the loss, each student step's loss, and every
in-loop evaluation metric against the training step. Written by rank 0 at each in-loop evaluation and at the end of
a run, atomically (a reader sees the old picture or the new one)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_metrics(run_dir: str | os.PathLike) -> Path | None:
    """Draw RUN_DIR/metrics.jsonl into RUN_DIR/metrics.png; None when there is nothing to draw yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if _finite(r.get("loss"))]
    evals = sorted({k for r in records for k in r if k.startswith("eval/") and k not in ("eval/ema", "eval/seconds")})
    if not train:
        return None
    panels = ["loss", "loss_per_step", *evals]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2), squeeze=False)
    steps = [r["step"] for r in train]
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "loss":
            ax.plot(steps, [r["loss"] for r in train], lw=1)
            ax.set_yscale("log")
        elif key == "loss_per_step":
            per = [r.get("loss_per_step") for r in train]
            for s in range(max((len(p) for p in per if p), default=0)):
                points = [(st, p[s]) for st, p in zip(steps, per, strict=True) if p and _finite(p[s])]
                if points:
                    ax.plot(*zip(*points, strict=True), lw=1, label=f"step {s + 1}")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            ax.set_yscale("log")
        else:
            points = [(r["step"], r[key]) for r in records if _finite(r.get(key))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o")
        ax.set(xlabel="step", title=key)
    fig.tight_layout()
    out = run_dir / "metrics.png"
    tmp = out.with_name(f".metrics.tmp.{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
