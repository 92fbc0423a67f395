"""A webdataset run does not import mosaicml-streaming: the trainer, the pipeline and the webdataset loader load it
only for MDS data or offline trajectories."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_trainer_and_the_pipeline_do_not_import_streaming():
    code = (
        "import sys; import ard_scale.trainer.loop, ard_scale.pipeline, ard_scale.data.loader; "
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('streaming')}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
