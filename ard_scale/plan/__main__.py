"""python -m ard_scale.plan RECIPE --gpus N [--gpu-mem-gb 80] [--json plan.json] [a.b=c ...]"""

import sys

from ard_scale.plan.report import main

main(sys.argv[1:])
