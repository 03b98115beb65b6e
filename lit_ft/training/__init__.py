"""Training: the LightningModule, AdamW and the schedule, mixed precision, checkpoints and
exact resumption, preemption, and the stop on a non-finite loss."""
