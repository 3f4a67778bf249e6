"""IResNet-50 + CosFace (s = 64, m = 0.35) on CASIA-WebFace.

Same data, network (dropout 0.4 in the output block included), optimiser and schedule as
r50_arcface_casia.py, so the two heads compare on equal terms: the ArcFace paper trains its
CosFace baseline on CASIA the same way (Deng et al. 2019, sec. 4.2, table 2). Only the margin
differs: s = 64, m = 0.35 (Wang et al. 2018, "CosFace", sec. 4.1).

    torchrun --nproc_per_node=4 -m training train --config training/configs/r50_cosface_casia.py
"""

import dataclasses
import runpy
from pathlib import Path

arcface = runpy.run_path(str(Path(__file__).with_name("r50_arcface_casia.py")))["config"]

config = dataclasses.replace(arcface, name="", head="cosface", head_kwargs={"s": 64.0, "m": 0.35})
