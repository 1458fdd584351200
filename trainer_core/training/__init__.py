"""What every rank runs under DeepSpeed: the training entry point and the blockwise vocabulary-head loss."""
