"""IResNet-50 + ArcFace on CASIA-WebFace, with the ArcFace paper's CASIA schedule.

Sources: [A] Deng et al., "ArcFace", CVPR 2019, sec. 3 and 4.1; [I] insightface's MXNet
training code (recognition/symbol/symbol_utils.py, `get_fc1`, fc_type "E"), which the paper's
CASIA experiments ran. Data: InsightFace's packaged CASIA-WebFace (`faces_webface_112x112/`:
train.rec, train.idx, property, lfw.bin, cfp_fp.bin, agedb_30.bin), 10,572 identities.

    torchrun --nproc_per_node=4 -m training train --config training/configs/r50_arcface_casia.py
    python -m training train --config r50_arcface_casia --set gradient_accumulation=4  # one GPU
"""

from training.config import TrainConfig

DATA = "data/faces_webface_112x112"
# [A] sec. 4.1: batch 512 on four GPUs.
GLOBAL_BATCH = 512
PER_GPU_BATCH = 128
# Aligned images of the packaged CASIA-WebFace; converts [A]'s iteration counts to epochs.
NUM_IMAGES = 494_414
STEPS_PER_EPOCH = NUM_IMAGES // GLOBAL_BATCH  # 965

config = TrainConfig(
    backbone="r50",  # [A] sec. 4.2, CASIA experiments: ResNet50 ("LResNet50E-IR")
    # [A] sec. 3 / [I] fc_type "E": output block BN-Dropout-FC-BN, dropout p = 0.4
    backbone_kwargs={"dropout": 0.4},
    embedding_size=512,  # [A] sec. 4.1: 512-D embedding
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},  # [A] sec. 4.1: s = 64, m = 0.5
    data=DATA,
    num_classes=10_572,  # checked against the data set's `property` at start
    num_workers=4,  # a loader setting, not part of the recipe
    batch_size=PER_GPU_BATCH,  # [A] sec. 4.1: 4 GPUs x 128
    recipe_global_batch=GLOBAL_BATCH,  # lr scales linearly if the global batch differs
    epochs=32_000 / STEPS_PER_EPOCH,  # [A] sec. 4.1: stop at 32K iterations (33.2 epochs)
    optimizer="sgd",
    lr=0.1,  # [A] sec. 4.1: learning rate starts from 0.1
    momentum=0.9,  # [A] sec. 4.1
    weight_decay=5e-4,  # [A] sec. 4.1
    lr_schedule="step",
    # [A] sec. 4.1: divided by 10 at 20K and 28K iterations (20.7 and 29.0 epochs)
    lr_milestones=(20_000 / STEPS_PER_EPOCH, 28_000 / STEPS_PER_EPOCH),
    lr_gamma=0.1,
    warmup_epochs=0.0,  # [A]: no warm-up
    grad_clip_norm=5.0,  # arcface_torch train_v2.py (the papers do not state one)
    amp=True,  # not in [A] (MXNet float32); float16 as arcface_torch, FC in float32
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),  # [A] table 2
    eval_every=2000,  # arcface_torch's `verbose` = 2000 steps
    checkpoint_every=2000,
    log_every=50,
)
