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
    "runs.no_such_checkpoint": "运行 {name} 没有步数为 {step} 的完整检查点；现有的完整检查点：{have}",

    # --- training (trainer_core/training/) ---

    # --- models (trainer_core/models/) ---

    # --- cli (trainer_core/cli.py) ---

    # --- app (app/, pages/) ---

}
