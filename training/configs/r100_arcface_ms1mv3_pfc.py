"""IResNet-100 + ArcFace on MS1MV3 with Partial FC: insightface arcface_torch's `ms1mv3_r100`
recipe, trained as its `train_v2.py` trains it, with 10% of the class centres per step.

Sources: [T] insightface recognition/arcface_torch: configs/ms1mv3_r100.py and base.py,
train_v2.py (SGD, `PolynomialLRWarmup` with its default power 1.0, i.e. a *linear* decay to
0; the older train.py's `PolyScheduler` used power 2), lr_scheduler.py, backbones (dropout 0);
[P] An et al., "Partial FC", CVPR 2022 (sampling 10% of the centres matches the full FC).
Versions of [T]'s ms1mv3_r100.py differ (lr 0.1 x 20 epochs, lr 0.2 x 25 epochs); this recipe
keeps lr 0.1 and 20 epochs. Data: MS1MV3 (`ms1m-retinaface-t1/`: train.rec, train.idx,
property, lfw.bin, cfp_fp.bin, agedb_30.bin), 93,431 identities, 5,179,510 images. With 8
ranks each holds 11,679 centres and samples 1,168 per step.

    torchrun --nnodes=1 --nproc_per_node=8 -m training train \
        --config training/configs/r100_arcface_ms1mv3_pfc.py
"""

from training.config import TrainConfig

DATA = "data/ms1m-retinaface-t1"
GLOBAL_BATCH = 1024  # [T]: batch_size 128 per GPU on 8 GPUs

config = TrainConfig(
    backbone="r100",  # [T] network = "r100"
    backbone_kwargs={"dropout": 0.0},  # [T] train_v2.py: get_model(..., dropout=0.0)
    embedding_size=512,  # [T] embedding_size
    head="arcface",
    head_kwargs={"s": 64.0, "m": 0.5},  # [T] margin_list (1.0, 0.5, 0.0), losses.py s = 64
    sample_rate=0.1,  # [P]; [T]'s ms1mv3_r100 uses the full FC (1.0)
    data=DATA,
    num_classes=93_431,  # [T] num_classes; checked against the data set's `property`
    num_workers=4,  # a loader setting, not part of the recipe
    batch_size=128,  # [T] batch_size (per GPU)
    recipe_global_batch=GLOBAL_BATCH,
    epochs=20,  # [T] num_epoch
    optimizer="sgd",  # [T] base.py optimizer
    lr=0.1,  # [T] lr
    momentum=0.9,  # [T] momentum
    weight_decay=5e-4,  # [T] weight_decay
    lr_schedule="poly",
    lr_power=1.0,  # [T] train_v2.py: PolynomialLRWarmup(power=1.0), a linear decay
    warmup_epochs=0.0,  # [T] warmup_epoch
    grad_clip_norm=5.0,  # [T] train_v2.py: clip_grad_norm_(backbone.parameters(), 5)
    amp=True,  # [T] fp16 = True (FC and features BN in float32, GradScaler growth 100)
    eval_sets=(f"{DATA}/lfw.bin", f"{DATA}/cfp_fp.bin", f"{DATA}/agedb_30.bin"),  # [T]
    eval_every=2000,  # [T] verbose
    checkpoint_every=2000,
    log_every=50,
)
