"""Dataset files to training rows: reading records (JSON, JSONL, Parquet, CSV, save_to_disk), validating them,
chat templates and labels, packing, the encoded cache; stored uploads and subsets cut from a dataset."""
