"""MobileFaceNet + ArcFace on CASIA-WebFace, with the MobileFaceNet paper's schedule.

Data: InsightFace's packaged CASIA-WebFace (see r50_arcface_casia.py). Schedule (Chen et al.
2018, sec. 4.1): 128-d embeddings, global batch 512 (4 GPUs x 128), SGD lr 0.1 divided by 10
at 36K, 52K and 58K iterations, stop at 60K, i.e. 37.3, 53.8, 60.1 and 62.1 epochs. The paper
decays weights by 4e-5 (4e-4 after GDConv); one value for all layers is used here, 1e-4 as in
insightface arcface_torch's MobileFaceNet configs.

    torchrun --nproc_per_node=4 -m training train \
        --config training/configs/mobilefacenet_arcface_casia.py
"""

from training.config import TrainConfig

DATA = "data/faces_webface_112x112"

config = TrainConfig(
    backbone="mobilefacenet",
    embedding_size=128,
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},
    data=DATA,
    num_classes=10_572,
    num_workers=4,
    batch_size=128,
    epochs=62,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
    lr_schedule="step",
    lr_milestones=(37.3, 53.8, 60.1),
    lr_gamma=0.1,
    amp=True,
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),
    eval_every=2000,
    checkpoint_every=2000,
    log_every=50,
)
