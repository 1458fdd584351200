"""What a run will do: the typed run config (`sections`: its fields, docs and checks; `run_config`: the whole config,
read from YAML and --set), the DeepSpeed JSON built from it and its lints, the memory planner and the hardware it
plans for."""
