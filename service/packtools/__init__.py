"""Offline pack tools, above the pipeline they use: `fetch` (download a catalogue pack,
checksum-verified), `calibration` (thresholds by false match rate), `quantize` (an INT8
recognizer that must pass parity) and `batch_axis` (a batched SCRFD detector). None of them
runs in the served app; `service.cli.packs` and `service.cli.calibrate` drive them."""
