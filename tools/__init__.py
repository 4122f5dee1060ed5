"""Command-line tools that turn audio and labels into shards (and synthetic data for demos)."""
