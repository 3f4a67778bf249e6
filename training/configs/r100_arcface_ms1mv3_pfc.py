"""IResNet-100 + ArcFace on MS1MV3 with Partial FC, the recipe of insightface arcface_torch's
`ms1mv3_r100` config with 10% of the class centres sampled per step.

Data: MS1MV3 (`ms1m-retinaface-t1/`: train.rec, train.idx, property, lfw.bin, cfp_fp.bin,
agedb_30.bin), 93,431 identities, 5,179,510 images. Recipe (arcface_torch configs/ms1mv3_r100.py):
batch 128 per GPU on 8 GPUs, SGD lr 0.1, momentum 0.9, weight decay 5e-4, 20 epochs,
polynomial decay (power 2), mixed precision. Partial FC (An et al. 2022) reports a 10% sampling
rate matching the full FC; with 8 ranks each holds 11,679 centres and samples 1,168 per step.

    torchrun --nnodes=1 --nproc_per_node=8 -m training train \
        --config training/configs/r100_arcface_ms1mv3_pfc.py
"""

from training.config import TrainConfig

DATA = "data/ms1m-retinaface-t1"

config = TrainConfig(
    backbone="r100",
    embedding_size=512,
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},
    sample_rate=0.1,
    data=DATA,
    num_classes=93_431,
    num_workers=4,
    batch_size=128,
    epochs=20,
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
    weight_decay=5e-4,
    lr_schedule="poly",
    lr_power=2.0,
    warmup_epochs=0.0,
    amp=True,
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),
    eval_every=2000,
    checkpoint_every=2000,
    log_every=50,
)
