"""End to end on 2 ranks (launchers/train.py, real DeepSpeed ZeRO-3 on gloo): a corrupt MDS
shard is skipped and counted and the run ends (it hung), and finite data stops every rank at the same step with a
checkpoint and a message (it ended in a bare StopIteration). The bound on a run is the subprocess timeout."""

import itertools
import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ard_scale.data import bundled_digits_path
from ard_scale.data.samples import BadSample, decode_sample
from ard_scale.data.sources import iter_shard_set
from ard_scale.data.writers import WebdatasetWriter, write_shards
from ard_scale.utils.launch import ROOT, torchrun

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
TIMEOUT_S = 900  # a hang fails the test as subprocess.TimeoutExpired; a healthy run takes a few minutes here


def digits(n: int) -> list[dict]:
    samples = itertools.islice(iter_shard_set(bundled_digits_path("webdataset"), "webdataset"), n)
    return [{**s, "ext": "png"} for s in samples]


def train(run_dir: Path, *overrides: str):
    return torchrun(2, "launchers/train.py", "recipes/tiny_cpu.yaml", f"checkpoint.run_dir={run_dir}",
                    "checkpoint.every=100", *overrides, timeout=TIMEOUT_S)  # fmt: skip


def metrics(run_dir: Path) -> list[dict]:
    def refuse(constant):
        raise ValueError(f"{constant} in metrics.jsonl is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def latest_step(run_dir: Path) -> int:
    return int((run_dir / "checkpoints" / "latest").read_text().strip().rsplit("_", 1)[-1])


def overwrite_middle_third(path: Path) -> None:
    data = bytearray(path.read_bytes())
    lo, hi = len(data) // 3, 2 * len(data) // 3
    data[lo:hi] = np.random.default_rng(0).integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def undecodable(mds_dir: Path) -> int:
    """Samples of the MDS set that cannot be read or decoded, counted directly from the shards (not via the loader)."""
    from streaming.base.format import reader_from_json

    bad = 0
    for shard in json.loads((mds_dir / "index.json").read_text())["shards"]:
        reader = reader_from_json(str(mds_dir), None, shard)
        for i in range(reader.samples):
            try:
                row = reader[i]
                decode_sample(row["key"], row["image"], row["caption"], resolution=32, table=None)
            except BadSample:
                bad += 1
            except Exception:  # a garbled sample header: streaming's own decoding fails
                bad += 1
    return bad


def test_corrupt_mds_shard_on_two_ranks_is_skipped_counted_and_the_run_ends(tmp_path):
    num, epochs = 24, 2
    write_shards(digits(num), str(tmp_path / "data"), formats=("mds",), shard_bytes=1 << 20)
    mds = tmp_path / "data" / "mds"
    (shard,) = mds.glob("*.mds")
    overwrite_middle_third(shard)
    num_bad = undecodable(mds)
    assert 0 < num_bad < num
    run_dir = tmp_path / "run"
    # 12 samples per rank and epoch in 6 batches of 2: at most 12 steps in 2 epochs; the epoch boundary is crossed
    proc = train(run_dir, "data.format=mds", f"data.path={mds}", "data.batch_size=2", f"data.num_epochs={epochs}",
                 "train.max_steps=12")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    logged = metrics(run_dir)
    last = logged[-1]
    reasons = {k.split("/", 1)[1]: n for k, n in last.items() if k.startswith("skipped_samples/")}
    decode_skips = sum(n for reason, n in reasons.items() if "MDS sample" in reason or "image" in reason)
    assert decode_skips == epochs * num_bad, reasons  # every corrupt sample skipped once per epoch, on either rank
    assert last["skipped_samples"] == sum(reasons.values())
    # every sample of both epochs was trained on, skipped as corrupt, or dropped with another rank's empty batch
    assert last["samples_seen"] + last["skipped_samples"] == epochs * num
    # with this seed some micro-batches were all corrupt on one rank and redrawn on both (here 4 samples dropped
    # and the data ends at step 9 of 12): the redraw path ran, across the epoch boundary where streaming's barrier is
    assert reasons.get("dropped: another rank's micro-batch had no valid sample", 0) > 0, reasons
    assert last["step"] < 12
    assert f"data ran out at step {last['step']} after {epochs} epoch(s)" in proc.stderr
    assert latest_step(run_dir) == last["step"]


def test_finite_webdataset_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    samples = digits(10)
    for i in (6, 8):  # rank 1 reads positions 5..9 (one shard, no shuffle of one shard): 3 of its 5 are valid
        samples[i]["image"] = b""
    writer = WebdatasetWriter(str(tmp_path / "wds"), shard_bytes=1 << 20)
    for s in samples:
        writer.write(s)
    writer.finish()
    run_dir = tmp_path / "run"
    # rank 0: batches of 2, 2, 1; rank 1: 2, 1. The bound (3 steps) allows max_steps=3; the data ends after step 2
    common = (f"data.path={tmp_path / 'wds'}", "data.batch_size=2", "data.num_epochs=1")
    proc = train(run_dir, *common, "train.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "StopIteration" not in proc.stderr
    assert "data ran out at step 2 after 1 epoch(s)" in proc.stderr
    logged = metrics(run_dir)
    assert [m["step"] for m in logged] == [1, 2]
    assert [m["samples_seen"] for m in logged] == [4, 7]  # real samples (was batch_size × ranks per step)
    assert logged[-1]["skipped_samples"] == 2 and logged[-1]["skipped_samples/zero-size image"] == 2
    assert latest_step(run_dir) == 2  # checkpoint.every=100: saved because the data ended
    # and the run is finished: a Slurm job signalled now is not requeued (tests/unit/test_slurm_script.py)
    assert (run_dir / "data_ended").read_text() == "step_00000002"
    finished = subprocess.run(["bash", "-c", f'source launchers/slurm/lib.sh && ard_run_finished "{run_dir}" 3'],
                              cwd=ROOT)  # fmt: skip
    assert finished.returncode == 0

    # more steps than num_epochs can give: a ConfigError at start naming the key, said once for both ranks (both
    # stop on it), no traceback
    proc = train(run_dir, *common, "train.max_steps=4")
    assert proc.returncode != 0
    assert proc.stderr.count("train.max_steps: 4 steps cannot be reached") == 1, proc.stderr[-4000:]
    assert proc.stderr.count("exitcode  : 1 ") == 2, proc.stderr[-4000:]
    assert "at most 3 steps" in proc.stderr
    # the ranks exit with the message only (torchrun's agent still prints its own ChildFailedError traceback)
    assert not re.search(r'File ".*(ard_scale|launchers)/', proc.stderr), proc.stderr[-4000:]
    assert os.path.isdir(run_dir / "checkpoints") and latest_step(run_dir) == 2
