# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Support code of iclevr-diffusion, imported by the entry points at the repository's top level.

- `iclevr.data`: loading i-CLEVR-layout, imagefolder and Hub data; the course's label files (``conditions/``).
- `iclevr.metrics`: the course metric and its companions.
- `iclevr.evaluator`: the ResNet-18 evaluator, its training augmentations and the scorer.
- `iclevr.render`: the procedural renderer (the embedded default data).
- `iclevr.training`: what every trainer shares (Accelerator set-up, checkpoints, the time budget).
- `iclevr.ddpm`: the diffusion trainer's model, loss, data, validation and saving.
- `iclevr.sampling`: a saved pipeline sampled as the report measures it (sampler, seeded batches, seconds).
- `iclevr.io`, `iclevr.utils`: json, folders written in one piece, grids, EMA, hardware.

`pipeline_iclevr.py` stays a single top-level file: it ships inside every saved model as remote code.
"""
