"""MobileFaceNet + CosFace (s = 64, m = 0.35) on CASIA-WebFace.

Same data, optimiser and schedule as mobilefacenet_arcface_casia.py; only the margin differs:
s = 64, m = 0.35 (Wang et al. 2018, "CosFace", sec. 4.1).

    torchrun --nproc_per_node=4 -m training train \
        --config training/configs/mobilefacenet_cosface_casia.py
"""

import dataclasses
import runpy
from pathlib import Path

arcface = runpy.run_path(str(Path(__file__).with_name("mobilefacenet_arcface_casia.py")))["config"]

config = dataclasses.replace(arcface, name="", head="cosface", head_kwargs={"s": 64.0, "m": 0.35})
