"""Dataset files in every format the product reads, written from records (shared by data and page tests)."""

import json

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq


ALPACA = [
    {"instruction": "你是谁？", "input": "", "output": "家父是大理寺少卿甄远道。"},
    {"instruction": "再说一遍", "input": "小主", "output": "", "history": [["问", "答"]]},  # empty answer
    {"instruction": "你是谁？", "input": "", "output": "家父是大理寺少卿甄远道。"},  # duplicate of row 1
    {"instruction": "多轮", "input": "", "output": "好\n换行也在", "history": [["一", "二"], ["三", "四"]]},
    {"instruction": "坏历史", "input": "", "output": "嗯", "history": [["只有一半"]]},
    {"instruction": "占位", "input": "", "output": "{{user}}，臣妾在", "system": "你是甄嬛"},
    {"instruction": "数字", "input": "", "output": "42"},
    {"instruction": "控制\u0001字符", "input": "", "output": "不行"},
]


MESSAGES = [
    {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "皇上万福"}]},
    {"messages": [{"role": "user", "content": "查"}, {"role": "tool", "content": "{}"}]},
    {"messages": [{"role": "user", "content": "只有问"}]},
    {"messages": [{"role": "system", "content": "甄嬛"}, {"role": "user", "content": "在吗", "name": "皇上"},
                  {"role": "assistant", "content": "在"}]},
]


def table(records) -> pa.Table:
    """Columns from every record (absent fields are nulls), as `datasets.Dataset.from_list` would build."""
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(pa.array(records))])


def as_jsonl(tmp_path, records, name="same.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def as_parquet(tmp_path, records, name="d.parquet", **kwargs):
    pq.write_table(table(records), tmp_path / name, **kwargs)
    return tmp_path / name


def as_csv(tmp_path, records, name="d.csv"):
    """Nested fields as JSON text, absent ones as empty cells."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    cell = lambda v: "" if v is None else v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)  # noqa
    t = pa.table({c: pa.array([cell(r.get(c)) for r in records], pa.string()) for c in columns})
    pcsv.write_csv(t, tmp_path / name)
    return tmp_path / name


def as_saved(tmp_path, records, name="saved", *, shards=2, batch=3):
    """The layout `Dataset.save_to_disk` writes: data-0000N-of-0000M.arrow in the IPC stream format."""
    folder = tmp_path / name
    folder.mkdir()
    t = table(records)
    per = -(-t.num_rows // shards)
    files = []
    for i in range(shards):
        filename = f"data-{i:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / filename), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as writer:
            writer.write_table(t.slice(i * per, per), max_chunksize=batch)
        files.append({"filename": filename})
    (folder / "state.json").write_text(json.dumps({"_data_files": files, "_fingerprint": "x", "_format_type": None,
                                                   "_split": None}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder

