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

    # --- training (trainer_core/training/) ---
    "training.no_answer_tokens": "在 data.max_length={max_length} 下，没有任何训练记录保留下回答的词元；请调大它。",
    "training.no_usable_records": "data.path {path} 中没有可用的记录（{errors} 行有错误）；请先对它运行 `python -m trainer_core check-data`。",

    # --- models (trainer_core/models/) ---
    "models.dest_exists": "{dest} 已存在；请换一个新的文件夹名，或先删除它。",
    "models.dest_parent_missing": "{parent} 不存在；请先创建它，或选择其他目标位置。",
    "models.ended_early": "{file} 提前结束；请重新下载。",
    "models.export_dtypes": "张量 {name}：不支持的数据类型 {dtypes}。",
    "models.export_missing_tensor": "微调后的权重缺少 {name}；它们并非来自这个 Qwen-1 模型。",
    "models.export_no_checkpoint": "运行 {run} 没有可导出的完整检查点。",
    "models.export_no_such_checkpoint": "运行 {run} 没有完整的检查点 {step}；完整的检查点有：{steps}。",
    "models.export_original_not_qwen1": "{original} 不是（或已不再是）Qwen-1 检查点；export --format qwen1 需要模型当初导入时所用的文件夹。",
    "models.export_shape_mismatch": "张量 {name} 的形状为 {shape}，而原 Qwen-1 配置要求 {expected}；这次运行并非从该模型训练而来。",
    "models.folder_problem": "{folder}：{problem}",
    "models.import_source_gone": "模型 {model} 导入时所用的 Qwen-1 文件夹 {source} 已不存在；--format qwen1 需要复制其中的代码和分词器文件。",
    "models.index_broken": "{index} 已损坏；请重新下载模型。",
    "models.index_missing_files": "{index} 列出的文件中有 {count} 个缺失，第一个是 {first}；下载不完整。",
    "models.no_weights": "{folder} 中没有权重文件（*.safetensors）。",
    "models.not_imported": "模型 {model} 不是从 Qwen-1 检查点导入的（没有 {marker}）；--format qwen1 只适用于用 import-model 导入的模型的运行。",
    "models.not_qwen1": "{src} 不是 Qwen-1 检查点（config.json 中没有 model_type 'qwen' 或 {cls}）；其他模型可直接加载，无需转换。",
    "models.not_safetensors": "{file} 不是有效的 safetensors 文件；请重新下载。",
    "models.path_config_broken": "model.path {path}：config.json 已损坏（{reason}）；请重新下载或重新导出模型。",
    "models.path_is_qwen1": "model.path {path} 是自带 Python 代码的 Qwen-1 检查点：请先用 `python -m trainer_core import-model {path} models/<name>`（或训练页上的转换按钮）将其一次性导入为原生 Qwen2 模型，再训练导入后的模型；这样无需远程代码。",
    "models.path_no_config": "model.path {path} 中没有 config.json：这是 Hugging Face 模型文件夹吗？",
    "models.path_no_weights": "model.path {path} 中没有权重文件（*.safetensors）。",
    "models.path_not_dir": "model.path {path} 不是文件夹：请指向本地模型文件夹（入门模型可运行 `python -m trainer_core prepare-models` 生成）。",
    "models.path_pickle_only": "model.path {path} 只有 pickle 格式的权重（.bin/.pt）；由于 pickle 文件可能执行代码，我们只加载 safetensors。请先将其转换为 safetensors。",
    "models.path_remote_code": "model.path {path} 自带 Python 代码（config.json 中有 auto_map）；只有在信任其来源时才勾选 model.trust_remote_code。",
    "models.path_weights": "model.path {path}：{problem}",
    "models.qwen1_config_broken": "{folder}：config.json 已损坏（{reason}）。",
    "models.qwen1_dtype": "{src}：不支持 {dtype} 格式的权重（仅支持 bf16、fp16 或 fp32）。",
    "models.qwen1_field_missing": "config.json：{field} 缺失或不是正整数；这是 Qwen-1 检查点吗？",
    "models.qwen1_missing_tensors": "{src}：权重缺少配置所要求的 {count} 个张量，第一个是 {first}。",
    "models.qwen1_mixed_dtypes": "张量 {name} 是 {dtype}，而词嵌入是 {expected}；不支持混合数据类型。",
    "models.qwen1_no_config": "{src} 中没有 config.json：请指向下载好的 Qwen-7B-Chat 文件夹。",
    "models.qwen1_no_counterpart": "张量 {name} 在 Qwen2 中没有对应项（也许是 Qwen2 没有的偏置？）。",
    "models.qwen1_no_embedding": "{src}：权重中没有 transformer.wte.weight；这是 Qwen-1 检查点吗？",
    "models.qwen1_no_vocab": "{src} 中没有 qwen.tiktoken；下载不完整。",
    "models.qwen1_pickle_only": "{folder} 只有 pickle 格式的权重（.bin/.pt）；由于 pickle 文件可能执行代码，我们只加载 safetensors。请下载该模型的 .safetensors 文件（Qwen-7B-Chat 有发布），或先将 .bin 文件转换为 safetensors。",
    "models.qwen1_scaling_not_carried": "{fields}（超过 seq_length {seq_length} 后的长上下文缩放）未被保留：请让 data.max_length 不超过 {seq_length}。",
    "models.qwen1_seq_length": "data.max_length {max_length} 超过了这个导入的 Qwen-1 模型的 seq_length {seq_length}；其长上下文缩放（dynamic NTK、logn）未被保留，超出部分的位置未经训练：请让 data.max_length 不超过 {seq_length}。",
    "models.qwen1_shape_mismatch": "张量 {name} 的形状为 {shape}，而 config.json 要求 {expected}；权重与配置不匹配。",
    "models.qwen1_unknown_tensor": "张量 {name} 不属于 {layers} 层的 Qwen-1 模型。",
    "models.qwen1_unrepresentable": "config.json：{field}={value} 无法导入为 Qwen2（{why}）。",
    "models.qwen1_vocab_ranks": "{vocab} 不包含 Qwen-1 的 151,643 个词表项；它是 Qwen 的 qwen.tiktoken 吗？",
    "models.qwen1_why_activation": "Qwen2 的 MLP 使用 SwiGLU",
    "models.qwen1_why_ffn": "它必须是偶数：其一半是 SwiGLU 的宽度",
    "models.qwen1_why_heads": "hidden_size {hidden} 不是它的整数倍",
    "models.qwen1_why_kv_channels": "Qwen2 的头大小为 hidden_size / num_attention_heads = {size}",
    "models.qwen1_why_no_bias": "Qwen2 只在 q/k/v 上有偏置，输出投影和 MLP 投影上没有",
    "models.qwen1_why_pos_emb": "Qwen2 只有旋转位置编码",
    "models.qwen1_why_positive": "它必须是正数",
    "models.qwen1_why_post_norm": "Qwen2 是前置归一化（pre-norm）",
    "models.qwen1_why_rotary_pct": "Qwen2 会旋转每个头的全部维度；只支持 1.0",
    "models.qwen1_why_vocab": "Qwen 的分词器需要 {rows} 行",
    "models.truncated_weights": "{file} 不完整（{size} / {need} 字节）；请重新下载。",
    "models.vocab_download_failed": "无法下载 {wheel} 以获取 qwen.tiktoken（{reason}）。没有网络时，请将 QWEN_TIKTOKEN_FILE 设为 qwen.tiktoken 的一份副本。",
    "models.vocab_not_qwen": "{source} 不是 Qwen 的 qwen.tiktoken（sha256 为 {digest}，应为 {expected}）。",
    "models.vocab_override_missing": "QWEN_TIKTOKEN_FILE={path} 不存在；请取消该设置，或将其指向 qwen.tiktoken。",

    # --- cli (trainer_core/cli.py) ---

    # --- app (app/, pages/) ---

}
