# Copyright 2026 The iclevr-diffusion authors. Licensed under the Apache License, Version 2.0.
"""Support code of iclevr-diffusion, imported by the entry points at the repository's top level.

- `iclevr.data`: loading i-CLEVR-layout, imagefolder and Hub data into a `datasets.Dataset`.
- `iclevr.labels`: the label files (train.json, condition lists, objects.json; the course's own in ``conditions/``)
  and the vocabulary a dataset defines.
- `iclevr.images`: decoding images, and the tensors the models see.
- `iclevr.metrics`: the course metric and its companions.
- `iclevr.evaluator`: the ResNet-18 evaluator, its training augmentations and the scorer.
- `iclevr.render`: the procedural renderer (the embedded default data).
- `iclevr.loop`: the generator trainers' one training loop (resume, the time budget, validation, the one-piece save).
- `iclevr.flags`, `iclevr.run_setup`, `iclevr.checkpoints`, `iclevr.stopwatch`, `iclevr.validation`: what every
  trainer shares: its flags, its Accelerator, its checkpoints, its clock, its validation.
- `iclevr.ddpm`, `iclevr.gan`: each generator trainer's flags, model, loss and saving.
- `iclevr.hub`: model cards and the upload.
- `iclevr.sampling`: a saved pipeline sampled as the report measures it (sampler, seeded batches, seconds).
- `iclevr.io`, `iclevr.utils`: json, folders written in one piece, grids, EMA, hardware.

`pipeline_iclevr.py` stays a single top-level file: it ships inside every saved model as remote code.
"""
