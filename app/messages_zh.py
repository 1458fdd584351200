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
    "runs.data_not_found": "找不到 data.path {path}：请上传数据集或选择示例数据。",
    "runs.gpus_missing": "placement.gpus 要求使用 GPU {missing}，但这台机器只有 {n} 块 GPU。",
    "runs.too_many_cpu_ranks": "placement.num_ranks 为 {n}，超过了这台机器的 {cores} 个 CPU 核心，而且它没有 GPU；最多使用 {cores} 个。",
    "runs.lint_error": "{message}（{lint}）",
    "runs.problems_joined": "{first}；{rest}",
    "runs.ds_config_problems": "DeepSpeed 配置有问题：{problems}",
    "runs.learning_rate_high": "train.learning_rate {lr:g} 远高于 {billions:.1f}B 参数模型全参数微调能承受的范围（通常为 1e-5 到 2e-5；高于 {limit:g} 往往会抹掉模型已有的知识）；configs/qwen_7b_4x24gb.yaml 使用 1e-5。",
    "runs.no_usable_records": "data.path {path} 中没有可用的记录。",
    "runs.no_usable_records_first": "data.path {path} 中没有可用的记录；第一个问题：{problem}",
    "runs.answers_cut_off": "data.max_length {max_length} 截掉了所有回答（加上人设后提示已达 {longest} 个 token）；请调大 data.max_length 或缩短 data.persona。",
    "runs.folder_unwritable": "运行目录 {root} 不可写（{reason}）；请让它可写，或把 TRAINER_RUNS_ROOT 设为一个可写的目录。",
    "runs.name_taken": "name：{root} 中已经有名为 {name!r} 的运行，请换一个名字。",
    "runs.no_free_name": "在 {root} 中找不到与 {name!r} 相近的空闲运行名。",
    "runs.not_a_run": "{ref} 不是运行目录（没有 {config}）；`python -m trainer_core runs` 会列出所有运行。",
    "runs.delete_live": "运行 {name} 处于“{state}”状态，请先停止再删除。",
    "runs.delete_outside": "{run} 不在运行目录 {root} 之内。",
    "runs.lock_dir_unusable": "无法使用设备锁目录 {folder}（{reason}）；请把 {env} 设为本机所有看板共用的可写目录。",
    "runs.another_run": "另一个运行",
    "runs.device_busy": "{key} 正被运行 {holder} 占用；请先停止它，或选择其他设备（placement.gpus）。",
    "runs.device_taken": "{key} 已不再为运行 {name} 保留：它的监督进程在各 rank 启动前就结束了，设备已被另一个运行占用；请稍后恢复此运行。",
    "runs.hostfile_line": "placement.hostfile 第 {line} 行 {text!r} 应形如 'host1 slots=4'。",
    "runs.hostfile_slots": "placement.hostfile 第 {line} 行：slots 必须是正整数（收到 {slots!r}）。",
    "runs.hostfile_host": "placement.hostfile 第 {line} 行：{host!r} 不是主机名。",
    "runs.hostfile_twice": "placement.hostfile 第 {line} 行：{host} 出现了两次。",
    "runs.hostfile_empty": "placement.hostfile 中没有列出任何主机。",
    "runs.hostfile_neither": "placement.hostfile {spec!r} 既不是文件，也不是 'host slots=N' 格式的行。",
    "runs.hostfile_few_slots": "placement.hostfile 给 {host} 分配了 {slots} 个 slots，但 placement.num_ranks 是 {ranks}。",
    "runs.hostfile_gpu_missing": "placement.gpus 要求使用 GPU {gpu}，但 placement.hostfile 只给 {host} 分配了 {slots} 个 slots（GPU 0-{last}）。",
    "runs.hostfile_node_count": "placement.hostfile 列出了 {n} 台主机，但 placement.num_nodes 是 {nodes}。",
    "runs.pdsh_unsafe_path": "placement.launcher pdsh 会在每个节点上通过 shell 执行 {value!r}，shell 会解释其中的某些字符；请只用由字母、数字和 ./_- 组成的路径。",

    # --- training (trainer_core/training/) ---

    # --- models (trainer_core/models/) ---

    # --- cli (trainer_core/cli/) ---
    "cli.out_of_range": "{flag} 必须在 {lo:,} 到 {hi:,} 之间（收到 {value}）。",
    "cli.out_of_range_why": "{flag} 必须在 {lo:,} 到 {hi:,} 之间（{why}）（收到 {value}）。",
    "cli.max_length_range": "即 data.max_length 允许的范围",
    "cli.empty_prompt": "--prompt 为空，请给出模型要回答的那句话。",
    "cli.no_model_or_run": "{ref}：没有这个模型目录或运行；请给出模型目录、运行目录或运行名（`python -m trainer_core runs` 会列出所有运行）。",
    "cli.join_not_no_ssh": "运行 {name} 使用 placement.launcher {launcher}；join 只用于 no_ssh 运行。",
    "cli.join_node_rank": "对运行 {name}，--node-rank 必须在 1 到 {last} 之间。",

    # --- app (app/, pages/) ---

}
