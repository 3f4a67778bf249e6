"""Training toolkit: margin-softmax heads, IResNet/MobileFaceNet backbones, data readers, a
torchrun-ready trainer, the verification protocol, and ONNX export into a service model pack.

Entry points: `python -m training {train,evaluate,export}` (also `faceverify-train`).
"""
