"""IResNet-50 + ArcFace on CASIA-WebFace, with the ArcFace paper's CASIA schedule.

Data: InsightFace's packaged CASIA-WebFace (`faces_webface_112x112/`: train.rec, train.idx,
property, lfw.bin, cfp_fp.bin, agedb_30.bin), 10,572 identities, 494,414 aligned images.
Schedule (Deng et al. 2019, sec. 4.1): global batch 512 (4 GPUs x 128), SGD lr 0.1 divided
by 10 at 20K and 28K iterations, stop at 32K; momentum 0.9, weight decay 5e-4. At 965.7
iterations per epoch that is 20.7, 29.0 and 33.1 epochs. On another global batch size,
scale lr linearly (e.g. 0.025 for one GPU x 128).

    torchrun --nproc_per_node=4 -m training train --config training/configs/r50_arcface_casia.py
"""

from training.config import TrainConfig

DATA = "data/faces_webface_112x112"

config = TrainConfig(
    backbone="r50",
    embedding_size=512,
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},
    data=DATA,
    num_classes=10_572,
    num_workers=4,
    batch_size=128,
    epochs=33,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    lr_schedule="step",
    lr_milestones=(20.7, 29.0),
    lr_gamma=0.1,
    amp=True,
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),
    eval_every=2000,
    checkpoint_every=2000,
    log_every=50,
)
