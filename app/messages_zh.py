"""Chinese for every coded message of `trainer_core` (errors, data-row problems, DeepSpeed lints, planner notes).

Keys are `Text.code`s; placeholders are the same names as in the English template at the place the message is
written (tests/test_messages.py checks both). English needs no table here: it is the template itself. Sections
follow trainer_core's subpackages; keep each entry on one line so parallel edits merge cleanly.
"""

MESSAGES_ZH: dict[str, str] = {
    # --- data (trainer_core/data/) ---
    "data.file_not_found": "{path}：文件不存在，请检查路径",

    # --- config (trainer_core/config/) ---

    # --- runs (trainer_core/runs/) ---

    # --- training (trainer_core/training/) ---

    # --- models (trainer_core/models/) ---
    "models.max_new_tokens_range": "max_new_tokens 必须在 1 到 8192 之间（收到 {value}）。",
    "models.temperature_range": "temperature 必须在 0 到 5 之间（收到 {value}）。",
    "models.top_p_range": "top_p 必须大于 0 且不超过 1（收到 {value}）。",
    "models.repetition_penalty_range": "repetition_penalty 必须在 0.5 到 3 之间（收到 {value}）。",
    "models.no_such_checkpoint": "运行 {run} 没有完整的检查点 {step}。",
    "models.run_has_no_model": "运行 {run} 还没有最终模型，也没有完整的检查点。",
    "models.checkpoint_needs_run": "--checkpoint {step} 只能用于运行；{path} 是模型目录，不是运行。",

    # --- cli (trainer_core/cli.py) ---

    # --- app (app/, pages/) ---

}
