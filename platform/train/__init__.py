"""The trainer: config, parallel layout, objectives, checkpoints, and the training loop."""
