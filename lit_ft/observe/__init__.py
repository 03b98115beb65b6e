"""What a run shows and records: the training recorder, throughput/MFU, progress, loggers,
and sample generations. Its `[lit_ft]` lines come from lit_ft/log.py, a leaf every package
may use."""
