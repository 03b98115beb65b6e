"""What a run shows and records: the rank-zero log, the training recorder, throughput/MFU,
progress, loggers, and sample generations."""
