"""What a run will do: the typed run config, the DeepSpeed JSON built from it and its lints, the memory planner and the hardware it plans for."""
