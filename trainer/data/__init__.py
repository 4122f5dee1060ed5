"""Shards → batches: manifest records, sampling, DALI decode and features, augmentation."""
