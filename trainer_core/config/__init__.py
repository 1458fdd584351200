"""What a run will do: the typed run config (`sections`: its fields, docs and checks; `run_config`: the whole config,
read from YAML and --set), the DeepSpeed JSON built from it and its lints (`ds_config`, the only reader of its ZeRO
block), the memory planner (with `head_loss`, the block sizes it shares with the trainer's head loss) and the
hardware it plans for."""
