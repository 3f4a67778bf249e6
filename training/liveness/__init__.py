"""Passive liveness (presentation-attack detection): the MiniFASNet classifiers of
Silent-Face-Anti-Spoofing, rebuilt here so that their published state_dicts load exactly, and
their export to ONNX for the service's liveness stage (`service.faces.liveness`)."""
