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
    "runs.state_queued": "排队中",
    "runs.state_starting": "启动中",
    "runs.state_running": "训练中",
    "runs.state_stopping": "正在停止",
    "runs.state_completed": "已完成",
    "runs.state_failed": "失败",
    "runs.state_stopped": "已停止",
    "runs.state_other": "{state}",
    "runs.already_live": "运行 {name} 已经是“{state}”状态。",
    "runs.not_running": "运行 {name} 没有在运行。",
    "runs.external_force_stop": "运行 {name} 是在工作室之外启动的（launch_node.sh 或 Slurm）：请在它运行的地方强制停止（scancel，或在其启动器上按 Ctrl-C）；普通停止可以在这里保存并结束它。",
    "runs.resume_live": "运行 {name} 仍处于“{state}”状态，请先停止它。",
    "runs.resume_completed": "运行 {name} 已经完成；要再训练一次，请克隆它。",

    # --- training (trainer_core/training/) ---

    # --- models (trainer_core/models/) ---
    "models.archive_incomplete": "{folder} 不是完整的模型文件夹（没有 {marker}），请重新导出。",

    # --- cli (trainer_core/cli.py) ---

    # --- app (app/, pages/) ---
    "app.config_too_big": "{name} 有 {size}，远超一个运行配置（几 KB）：请选择某个运行的 config.yaml。",
    "app.config_not_text": "{name} 不是 UTF-8 文本：请选择 config.yaml 文件。",
    "app.config_not_yaml": "{name} 不是有效的 YAML：{reason}",
    "app.config_too_deep": "{name} 嵌套太深；运行配置只有两层。",
    "app.config_not_mapping": "{name} 应该是一个映射（model:、data:、train: ……），而不是 {kind}。",

}
