"""Data: sources (load, split), the LightningDataModule, streaming, the resumable sampler,
length grouping, and the built-in corpora."""
