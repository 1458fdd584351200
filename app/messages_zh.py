"""Chinese for every coded message of `trainer_core` (errors, data-row problems, DeepSpeed lints, planner notes).

Keys are `Text.code`s; placeholders are the same names as in the English template at the place the message is
written (tests/test_messages.py checks both). English needs no table here: it is the template itself. Sections
follow trainer_core's subpackages; keep each entry on one line so parallel edits merge cleanly.
"""

MESSAGES_ZH: dict[str, str] = {
    # --- data (trainer_core/data/) ---
    "data.file_not_found": "{path}：文件不存在，请检查路径",

    # --- config (trainer_core/config/) ---
    "config.model_path_empty": "{name} 为空：请填写本地模型所在的目录",
    "config.data_path_empty": "{name} 为空：请填写数据集文件，或 save_to_disk 保存的文件夹",
    "config.between": "{name} 必须在 {lo} 到 {hi} 之间（当前为 {value}）",
    "config.in_interval": "{name} 必须在区间 {interval} 内（当前为 {value}）",
    "config.stage": "{name} 必须是 0、1、2 或 3（当前为 {value}）",
    "config.one_of": "{name} 必须是以下之一：{choices}（当前为 {value}）",
    "config.epochs_positive": "{name} 必须大于 0，除非设置了 train.max_steps（当前为 {value}）",
    "config.at_most": "{name} 不能超过 {hi}（当前为 {value}）",
    "config.max_steps": "{name} 必须是 -1，或 1 到 {hi} 之间的步数（当前为 {value}）",
    "config.learning_rate": "{name} 必须大于 0 且小于 1（当前为 {value}）",
    "config.not_negative": "{name} 不能为负数（当前为 {value}）",
    "config.offload_param_stage": "{name} 需要 deepspeed.stage 为 3（当前为 stage {stage}）；stage 1–2 请改用 offload_optimizer",
    "config.offload_optimizer_stage": "{name} 需要 deepspeed.stage 至少为 1（stage 0 没有可卸载的 ZeRO 优化器）",
    "config.nvme_path_required": "{name} 为必填项：卸载到 nvme 时需要一个目录",
    "config.not_absolute": "{name} 必须是绝对路径（当前为 {value}）",
    "config.system_dir": "{name} {path} 是系统目录；请使用你自己的、位于快速本地磁盘上的目录",
    "config.nvme_missing": "{name} 缺失；请给出快速本地磁盘上的一个目录",
    "config.nvme_not_dir": "{name} {path} 不是已存在的目录；请先创建它",
    "config.nvme_not_ours": "{name} {path} 不是当前用户拥有且可写的目录；请选择或创建一个这样的目录",
    "config.master_addr": "{name} 必须是主机名或 IP 地址（当前为 {value}）",
    "config.local_nodes": "{name} 为 {value}，但 placement.launcher 是 local：多节点请使用 pdsh、ssh 或 no_ssh",
    "config.hostfile_required": "{name} 为必填项：placement.launcher 为 {launcher} 时需要它（每个节点一行 “host slots=N”）",
    "config.gpu_ids": "{name} 必须是非负的 GPU 编号（当前为 {value}）",
    "config.gpu_twice": "{name} 中有重复的 GPU（当前为 {value}）",
    "config.gpus_count": "{name} 有 {count} 个编号，但 placement.num_ranks 是 {ranks}：请让两者一致",
    "config.gpu_id_high": "{name} 中的 GPU 编号必须小于 1024（当前为 {value}）",
    "config.run_name": "{name} 只能包含字母、数字、“.”、“_” 和 “-”，并且要以字母或数字开头（当前为 {value}）",
    "config.not_a_list": "{name} 必须是列表（当前为 {kind} {value}）",
    "config.not_a_bool": "{name} 必须是 true 或 false（当前为 {value}）",
    "config.not_an_int": "{name} 必须是整数（当前为 {value}）",
    "config.not_a_number": "{name} 必须是数字（当前为 {value}）",
    "config.not_finite": "{name} 必须是有限的数字（当前为 {value}）",
    "config.not_text": "{name} 必须是文本（当前为 {value}）",
    "config.unknown_key_close": "未知的配置项 {key}（你是不是想写 {suggestion}？）",
    "config.unknown_key": "未知的配置项 {key}（可用的有：{known}）",
    "config.section_not_mapping": "{name} 必须是“键: 值”形式的映射（当前为 {value}）",
    "config.not_a_mapping": "配置必须是一个 YAML 映射，包含 model、data、train、deepspeed、placement 等键",
    "config.set_no_equals": "--set {item} 的格式应为 key=value，例如 train.learning_rate=2e-5",
    "config.set_no_key": "--set {item} 的“=”前面没有键名",
    "config.set_too_nested": "--set {key} 的值嵌套过深；请给一个简单的值",
    "config.set_too_deep": "--set 的键 {key} 层级太深：请用 section.field 的形式，例如 train.epochs=2",
    "config.set_not_section": "--set {key} 不是一个配置分区",
    "config.file_not_found": "找不到配置文件 {path}：请给出一个已存在的 .yaml 文件，例如 configs/quickstart.yaml",
    "config.bad_yaml": "配置文件 {path} 不是有效的 YAML：{detail}",
    "config.yaml_too_nested": "配置文件 {path} 嵌套过深；运行配置只有两层",
    "config.yaml_not_mapping": "配置文件 {path} 必须是一个映射（model:、data:、train: 等），而不是 {kind}",
    "config.ds_file_not_found": "deepspeed.config_file {path} 不存在",
    "config.ds_bad_json": "deepspeed.config_file {path} 不是有效的 JSON：{detail}",
    "config.ds_json_problem": "deepspeed.config_file {path}：{detail}",
    "config.ds_not_object": "deepspeed.config_file {path} 必须是一个 JSON 对象",
    "config.ds_repeated_key": "deepspeed.config_file {path}：键 {key} 出现了不止一次；请只保留一个",
    "config.unknown_preset": "未知的 DeepSpeed 预设 {name}；可选的有：{choices}",
    "config.model_config_unreadable": "model.path {path}：无法读取它的配置（{detail}）",
    "config.plan_cpu_ranks": "本机没有 GPU：以上数字是每个 CPU 进程（rank）的常驻内存",
    "config.plan_fp32_on_gpu": "在 GPU 上用 fp32 训练，参数和梯度占用的显存会翻倍；请使用 auto 精度",
    "config.bad_zero_block": "DeepSpeed 配置中的 zero_optimization 无效（stage {stage}，卸载设备 {devices}）；请先修正 DeepSpeed 检查报告的问题",
    "lint.list": "{first}；{rest}",
    "lint.zero_stage": "zero_optimization.stage 必须是 0、1、2 或 3（当前为 {stage}）",
    "lint.offload_device": "zero_optimization.{key}.device 必须是以下之一：{choices}（当前为 {device}）",
    "lint.offload_param_stage": "offload_param 只能用于 ZeRO stage 3，但当前 stage 是 {stage}；请删掉它，或改用 offload_optimizer",
    "lint.offload_optimizer_stage": "offload_optimizer 需要 ZeRO stage 1、2 或 3",
    "lint.zero3_save_gather": "ZeRO-3 没有开启 stage3_gather_16bit_weights_on_model_save：保存下来的模型将没有可用的权重；请把它设为 true",
    "lint.zero3_device_map": "device_map 不能与 ZeRO-3 同时使用，ZeRO-3 会自己放置参数；请去掉 device_map",
    "lint.fp16_on_bf16_gpu": "这块 GPU 支持 bf16，却使用了带损失缩放的 fp16：bf16 一样快，而且不会溢出",
    "lint.fp16_and_bf16": "fp16 和 bf16 同时开启了；请只开启其中一个",
    "lint.precision_disabled": "train.precision 是 {precision}，但 DeepSpeed 配置关闭了 {precision}",
    "lint.batch_value": "{key} 必须是 1 到 {hi} 之间的整数，或 \"auto\"（当前为 {value}）",
    "lint.batch_arithmetic": "train_batch_size {total} 不等于微批次 {micro} × 梯度累积 {accum} × {ranks} 个进程 = {product}；请设为 \"auto\"",
    "lint.batch_not_divisible": "train_batch_size {total} 不能被微批次 {micro} × {ranks} 个进程整除",
    "lint.zero_single_rank": "只有一个进程（rank）且没有卸载时，ZeRO stage {stage} 没有东西可切分，只会增加开销",

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
