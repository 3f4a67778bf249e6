"""The baseline of bench/vs_naive.py: the face-verification server a user writes in an
afternoon with FastAPI and insightface (issue 15 describes it).

`cv2.imdecode` -> insightface `SCRFD.detect` at 640 -> `face_align.norm_crop` ->
`ArcFaceONNX.get_feat` one face at a time -> cosine, in an `async def` route. Run with
`NAIVE_PACK=<pack folder> uvicorn bench.naive_server:app`. Needs insightface (dev install).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import cv2
import numpy as np
from fastapi import FastAPI, File, UploadFile
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.scrfd import SCRFD
from insightface.utils import face_align

PACK = Path(os.environ["NAIVE_PACK"])
detector = SCRFD(str(next(PACK.glob("det_*.onnx"))))
detector.prepare(0, input_size=(640, 640), det_thresh=0.5)
recognizer = ArcFaceONNX(str(next(p for p in PACK.glob("*.onnx") if not p.name.startswith("det"))))
recognizer.prepare(0)
app = FastAPI()


def _embedding(data: bytes) -> np.ndarray | None:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    boxes, keypoints = detector.detect(image, input_size=(640, 640))
    if boxes.shape[0] == 0:
        return None
    largest = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    crop = face_align.norm_crop(image, keypoints[largest])
    feature = recognizer.get_feat(crop).ravel()
    return feature / np.linalg.norm(feature)


@app.post("/verify")
async def verify(
    image1: Annotated[UploadFile, File()], image2: Annotated[UploadFile, File()]
) -> dict:
    first, second = _embedding(await image1.read()), _embedding(await image2.read())
    if first is None or second is None:
        return {"error": "no face"}
    return {"similarity": float(first @ second)}


@app.get("/readyz")
async def ready() -> dict:
    return {"ready": True}
