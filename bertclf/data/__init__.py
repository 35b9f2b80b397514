"""The data stage: files and archives in, splits, cached token ids, length-bucketed batches."""
