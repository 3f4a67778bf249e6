"""IResNet-50 + CosFace (s = 64, m = 0.35) on CASIA-WebFace.

Same data, optimiser and schedule as r50_arcface_casia.py, so the two heads compare on equal
terms; only the margin differs (Wang et al. 2018: s = 64, m = 0.35).

    torchrun --nproc_per_node=4 -m training train --config training/configs/r50_cosface_casia.py
"""

import dataclasses
import runpy
from pathlib import Path

arcface = runpy.run_path(str(Path(__file__).with_name("r50_arcface_casia.py")))["config"]

config = dataclasses.replace(arcface, name="", head="cosface", head_kwargs={"s": 64.0, "m": 0.35})
