"""RUN_DIR/metrics.png from metrics.jsonl: one panel for the loss, one for the per-step losses, one per eval metric."""

import json

from PIL import Image

from ard_scale.evaluation.plots import plot_metrics


def test_metrics_png_has_a_panel_per_quantity_and_skips_nulls(tmp_path):
    assert plot_metrics(tmp_path) is None  # nothing logged yet: nothing drawn
    records = [{"step": s, "loss": 1.0 / s, "loss_per_step": [0.5 / s, 1.5 / s]} for s in range(1, 5)]
    records[2]["loss"] = None  # a NaN-skipped step is logged as null
    records.append({"step": 4, "eval/fid": 12.5, "eval/ema": 1.0, "eval/seconds": 3.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = plot_metrics(tmp_path)
    assert out == tmp_path / "metrics.png"
    with Image.open(out) as img:
        assert img.size[0] == round(4.5 * 3 * 90)  # loss, loss_per_step, eval/fid (ema and seconds are not plotted)
