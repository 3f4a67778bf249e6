"""MobileFaceNet + ArcFace on CASIA-WebFace, with the MobileFaceNet paper's schedule.

Sources: [M] Chen et al., "MobileFaceNets", 2018, sec. 3 and 4.1; [A] Deng et al., "ArcFace",
2019, sec. 4.1; [T] insightface arcface_torch configs (ms1mv3_mbf.py). Data: InsightFace's
packaged CASIA-WebFace (see r50_arcface_casia.py). MobileFaceNet's output block is GDConv →
linear 1x1 conv → BN ([M] table 1): it has no dropout, so none is set here.

    torchrun --nproc_per_node=4 -m training train \
        --config training/configs/mobilefacenet_arcface_casia.py
"""

from training.config import TrainConfig

DATA = "data/faces_webface_112x112"
GLOBAL_BATCH = 512  # [M] sec. 4.1: batch size 512 (4 GPUs x 128)
PER_GPU_BATCH = 128
NUM_IMAGES = 494_414  # converts [M]'s iteration counts to epochs
STEPS_PER_EPOCH = NUM_IMAGES // GLOBAL_BATCH  # 965

config = TrainConfig(
    backbone="mobilefacenet",
    embedding_size=128,  # [M] sec. 3: 128-d feature
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},  # [M] sec. 4.1 trains with ArcFace; [A]'s s and m
    data=DATA,
    num_classes=10_572,  # checked against the data set's `property` at start
    num_workers=4,  # a loader setting, not part of the recipe
    batch_size=PER_GPU_BATCH,
    recipe_global_batch=GLOBAL_BATCH,
    epochs=60_000 / STEPS_PER_EPOCH,  # [M] sec. 4.1: finished at 60K iterations
    optimizer="sgd",
    lr=0.1,  # [M] sec. 4.1: learning rate begins with 0.1
    momentum=0.9,  # [M] sec. 4.1
    # [M] decays 4e-5 (4e-4 after GDConv); one value for all layers here, 1e-4 as [T]'s
    # MobileFaceNet configs.
    weight_decay=1e-4,
    lr_schedule="step",
    # [M] sec. 4.1: divided by 10 at 36K, 52K and 58K iterations
    lr_milestones=tuple(k / STEPS_PER_EPOCH for k in (36_000, 52_000, 58_000)),
    lr_gamma=0.1,
    warmup_epochs=0.0,  # [M]: no warm-up
    grad_clip_norm=5.0,  # arcface_torch train_v2.py (the papers do not state one)
    amp=True,  # not in [M]; float16 as [T], output layers in float32
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),
    eval_every=2000,  # [T]'s `verbose` = 2000 steps
    checkpoint_every=2000,
    log_every=50,
)
