"""A run that finishes in seconds on a CPU: a tiny IResNet-18 (first stage 4 channels,
64-d embeddings) with ArcFace on 16 synthetic identities, checked on unseen synthetic ones.

    python -m training train --config training/configs/synthetic_smoke.py
"""

from training.config import TrainConfig

config = TrainConfig(
    backbone="r18",
    backbone_kwargs={"width": 4},
    embedding_size=64,
    head="arcface",
    # s = 64 assumes hundreds of classes; with 16, a smaller scale and margin train stably.
    head_kwargs={"s": 16.0, "m": 0.3},
    data="synthetic",
    synthetic_identities=16,
    synthetic_images_per_identity=8,
    num_workers=0,
    batch_size=32,
    epochs=10,
    max_steps=40,
    lr=0.1,
    weight_decay=5e-4,
    lr_schedule="poly",
    warmup_epochs=0.0,
    log_every=5,
    checkpoint_every=20,
    eval_sets=("synthetic",),
    eval_every=40,
    eval_flip=False,
    target_far=0.01,
)
