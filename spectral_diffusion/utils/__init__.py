"""Small utilities: checkpoints, images, run bookkeeping."""
