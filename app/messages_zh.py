"""Chinese for every coded message of `trainer_core` (errors, data-row problems, DeepSpeed lints, planner notes).

Keys are `Text.code`s; placeholders are the same names as in the English template at the place the message is
written (tests/test_messages.py checks both). English needs no table here: it is the template itself. Sections
follow trainer_core's subpackages; keep each entry on one line so parallel edits merge cleanly.
"""

MESSAGES_ZH: dict[str, str] = {
    # --- data (trainer_core/data/) ---
    "data.cell_invalid_json": "{cell}：JSON 无效，位于第 {column} 列（{reason}）。",
    "data.cell_problem": "{cell}：{problem}",
    "data.column_type": "{name}：列 {column!r} 的类型是 {type}，没有对应的 JSON 形式；请使用字符串、由 [问题, 回答] 字符串对组成的列表（history），或由 {{role, content}} 结构组成的列表。",
    "data.control_character": "{role} 文本在第 {position} 个字符处有控制字符 U+{codepoint:04X}，请删掉它。",
    "data.csv_row_too_long": "{name}：有一行超过 {mb} MB；每条记录最多 20,000 个字符，请拆分或缩短它。",
    "data.damaged_table": "{name}：{what} 文件已损坏或不完整（{detail}）。",
    "data.dataset_dict": "{name}：这是一个包含 {splits} 划分的 DatasetDict；请给出其中一个划分的文件夹，例如 {example}。",
    "data.duplicate": "与第 {first} 行重复（已保留；若只想训练一次，请删掉它）。",
    "data.empty_instruction": "为空；它是用户说的话。",
    "data.empty_output": "为空；它是模型要学的回答。",
    "data.empty_turn": "{role} 轮次为空。",
    "data.ends_without_answer": "必须以助手轮次结尾，但结尾是 {role}。",
    "data.field_missing": "缺少必填字段。",
    "data.file_empty": "{name}：文件是空的（0 字节），至少需要一条记录。",
    "data.file_not_found": "{path}：文件不存在，请检查路径",
    "data.file_problem": "{name}：{problem}",
    "data.file_too_large": "{name}：文件大小为 {size}，超过了 {limit} 的上限；请拆成几个小文件，或删去一些记录。",
    "data.folder_without_state": "{name}：这个文件夹里没有 {state}；请给出数据集文件（.json、.jsonl、.parquet、.csv），或由 datasets 的 save_to_disk 写出的文件夹。",
    "data.history_not_array": "必须是由 [问题, 回答] 对组成的数组，实际是{type}。",
    "data.history_pair": "必须是由两个字符串组成的 [问题, 回答] 对。",
    "data.invalid_json_line": "JSON 无效，位于第 {column} 列（{reason}）。",
    "data.json_bad_escape": "反斜杠转义无效",
    "data.json_control_character": "字符串里有无效的控制字符",
    "data.json_expecting_colon": "缺少冒号 ':'",
    "data.json_expecting_comma": "缺少逗号 ','",
    "data.json_expecting_name": "缺少用双引号括起来的键名",
    "data.json_expecting_value": "缺少值",
    "data.json_extra_data": "末尾有多余内容",
    "data.json_unterminated": "字符串没有结束",
    "data.json_constant": "{constant} 不是合法的 JSON（请用 null 或数字）。",
    "data.json_recursion": "嵌套太深，解析器无法处理；请保持在 {limit} 层以内。",
    "data.json_too_deep": "嵌套了 {depth} 层，超过允许的 {limit} 层；请把它展平。",
    "data.kinds": ".json 数组、.jsonl、.parquet 或 .csv 文件，或由 datasets 的 save_to_disk 写出的文件夹",
    "data.malformed_json": "{name}：JSON 格式错误，位于第 {line} 行第 {column} 列（{reason}）。",
    "data.name_control_character": "{name}：文件名里有控制字符 U+{codepoint:04X}，请给文件改名。",
    "data.nested_too_deep": "{name}：嵌套了 {depth} 层，超过数据集允许的 {limit} 层；记录应是扁平的对象。",
    "data.no_chatml_token": "{tokenizer} 既没有对话模板，也没有 {token} token，无法构造 ChatML。",
    "data.no_record_column": "{name}：没有 {wanted} 中的任何一列（现有列：{columns}）；请按 .jsonl 记录的字段给列命名。",
    "data.no_records": "{name}：没有任何记录，请至少添加一条。",
    "data.no_user_turn": "没有用户轮次。",
    "data.not_a_file": "{path}：不是文件；请给出{kinds}的路径。",
    "data.not_a_string": "必须是字符串，实际是{type}。",
    "data.not_arrow_stream": "{name}：不是 save_to_disk 写出的 Arrow 流文件（{detail}）。",
    "data.not_csv": "{name}：不是可读的 CSV 文件（{detail}）。",
    "data.not_parquet": "{name}：不是可读的 Parquet 文件（{detail}）。",
    "data.not_utf8": "{name}：不是有效的 UTF-8（第 {line} 行，偏移 {offset} 处的字节 0x{byte:02x}）；请把文件另存为 UTF-8。",
    "data.only_whitespace": "{name}：文件里只有空白字符，至少需要一条记录。",
    "data.record_not_object": "这条记录是{type}，应为对象。",
    "data.repeated_key": "这个键出现了不止一次，只使用最后一个值。",
    "data.slow_tokenizer": "{tokenizer} 有对话模板，但不提供字符偏移；请改为加载它的 fast 分词器。",
    "data.special_token_in_text": "{role} 文本含有特殊 token {tokens}；它会按普通文字训练，不会成为回合标记；除非有意为之，请删掉。",
    "data.state_bad_entry": "{path}：_data_files 中的条目 {entry} 不是文件夹里的文件名。",
    "data.state_missing_file": "{path}：列出了 {filename}，但文件夹里没有这个文件。",
    "data.state_not_json": "{path}：不是可读的 JSON（{detail}）。",
    "data.state_without_files": "{path}：没有 _data_files 列表，不是 save_to_disk 写出的状态文件。",
    "data.subset_count": "要保留的记录数至少为 1（收到 {n}）。",
    "data.subset_empty": "{path}：没有可保留的可用记录。",
    "data.subset_not_json": "{path}：第 {row} 行含有 NaN 或 Infinity，.jsonl 文件无法保存；请改为 null 或数字。",
    "data.system_not_first": "system 轮次只能出现在最前面。",
    "data.template_answer_unended": "对话模板没有像在普通对话中那样，在第 {n} 条助手消息后写出回合结束符 {marker!r}；这条回答无法教会模型停下。",
    "data.template_changed_answer": "对话模板改动了一条助手回答，无法定位它的 token。",
    "data.template_changed_special": "对话模板改动了一条含特殊 token 文字的消息，无法把它当作普通文字保留；请删去这条消息里的特殊 token。",
    "data.template_failed": "模型的对话模板无法渲染这段对话：{reason}",
    "data.template_no_end_marker": "模型的对话模板在助手消息后没有写回合结束符，微调后的模型将学不会停下；请使用每个回合都有结束符的对话模板（例如 <|im_end|> 或 eos token）。",
    "data.template_unprobed": "无法探测模型的对话模板（它改写或丢弃了普通用户/助手对话中的消息）；请给模型一个标准的对话模板。",
    "data.too_long": "共 {chars:,} 个字符，超过了 {max_chars:,} 的上限（max_chars）。",
    "data.tool_call_turn": "工具调用轮次不参与训练（{what}），这条记录被略过。",
    "data.top_level_not_array": "{name}：顶层是{type}，应为记录数组 [{{\"instruction\": ..., \"output\": ...}}, ...]（或每行一条记录的 .jsonl 文件）。",
    "data.turn_not_object": "这一轮是{type}，应为对象。",
    "data.turns_empty": "为空；至少需要一轮用户发言和一轮助手回答。",
    "data.turns_not_array": "必须是由对话轮次组成的数组，实际是{type}。",
    "data.type_array": "数组",
    "data.type_boolean": "布尔值",
    "data.type_null": "null",
    "data.type_number": "数字",
    "data.type_object": "对象",
    "data.type_string": "字符串",
    "data.unfilled_placeholder": "回答里有未填写的模板占位符 {slots}；请填上内容，否则模型会学着原样说出它。",
    "data.unknown_field": "未知字段，已忽略（{format} 格式的记录使用 {known}）。",
    "data.unknown_role": "未知角色 {role!r}；请使用 {roles} 之一。",
    "data.unrecognised_record": "无法识别的记录；应包含 \"instruction\"/\"output\"、\"messages\" 或 \"conversations\"。",
    "data.unsupported_type": "{name}：不支持的文件类型 {ext!r}；请使用{kinds}。",
    "data.upload_type": "{name}：只能上传 .json、.jsonl、.parquet 或 .csv 文件。",
    "data.utf16": "{name}：文件是 UTF-16 编码；请另存为 UTF-8。",

    # --- config (trainer_core/config/) ---

    # --- runs (trainer_core/runs/) ---

    # --- training (trainer_core/training/) ---

    # --- models (trainer_core/models/) ---

    # --- cli (trainer_core/cli.py) ---

    # --- app (app/, pages/) ---

}
