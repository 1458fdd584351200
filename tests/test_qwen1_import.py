"""Qwen-1 (Qwen-7B-Chat) import: .venv/bin/python -m pytest tests/test_qwen1_import.py -q

The input is ../shared/fixtures/qwen1-tiny, a Qwen-7B-Chat-format folder (Qwen's own code, qwen.tiktoken, random bf16
weights) with reference.json made by Qwen's own modeling code under transformers 4.37.2. It is third-party test
input, read in place and never copied into the project.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import SHARED, cli
from trainer_core.common.paths import PROJECT_ROOT
from trainer_core.runs import protocol
from trainer_core.data.chat_format import encode_conversations, prompt_ids
from trainer_core.config.run_config import load_config
from trainer_core.common.errors import UserError
from trainer_core.models.local import check_model_dir
from trainer_core.models.qwen1_export import export_qwen1
from trainer_core.models.qwen1_import import MARKER, import_qwen1, imported_from, is_qwen1_dir, lint_imported_length
from trainer_core.runs.orchestrate import plan
from trainer_core.common.tailing import read_all_rows

FIXTURE = SHARED / "fixtures" / "qwen1-tiny"
pytestmark = pytest.mark.skipif(not (FIXTURE / "reference.json").is_file(),
                                reason=f"the Qwen-1 fixture is not here ({FIXTURE}); it lives in ../shared")
PERSONA = "现在你要扮演皇帝身边的女人--甄嬛"
QUICKSTART = "configs/quickstart.yaml"


@pytest.fixture(scope="module")
def reference():
    return json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    return import_qwen1(FIXTURE, tmp_path_factory.mktemp("imp") / "qwen1-tiny").dest


def fixture_copy(tmp_path: Path, name: str = "src") -> Path:
    """A private copy of the fixture to alter (weights, config, code) in one test."""
    return Path(shutil.copytree(FIXTURE, tmp_path / name))


def qwen1_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def test_the_fixture_is_recognised_and_plain_models_are_not(imported, starter_model):
    assert is_qwen1_dir(FIXTURE)
    assert not is_qwen1_dir(imported) and not is_qwen1_dir(starter_model)


def test_imported_fixture_reproduces_qwens_own_code_without_remote_code(imported, reference):
    config = json.loads((imported / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "auto_map" not in config and config["dtype"] == "bfloat16"
    assert not list(imported.glob("*.py")), "no Python travels into the imported folder"
    tok = AutoTokenizer.from_pretrained(imported, trust_remote_code=False, fix_mistral_regex=False)
    model = AutoModelForCausalLM.from_pretrained(imported, trust_remote_code=False, use_safetensors=True,
                                                 dtype=torch.float32)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    worst = 0.0
    for k, text in enumerate(reference["texts"]):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == reference["ids"][k], f"text {k}: token ids differ from QWenTokenizer's"
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        lse = torch.logsumexp(logits, dim=-1)
        at_ids = logits[torch.arange(len(ids)), torch.tensor(ids)]
        for ours, theirs in ((lse, reference["logsumexp"][k]), (at_ids, reference["logits_at_ids"][k])):
            diff = (ours - torch.tensor(theirs)).abs().max().item()
            worst = max(worst, diff)
            assert diff < 1e-3, f"text {k}: logits differ by {diff}"
        assert logits.argmax(dim=-1).tolist() == reference["argmax"][k], f"text {k}: argmax differs"
    print(f"largest difference from Qwen's own code: {worst:.2e}")


def test_tokenizer_keeps_qwen1_special_ids_and_generation_stops_on_im_end(imported):
    tok = AutoTokenizer.from_pretrained(imported, fix_mistral_regex=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>",
                                                      "<|extra_204|>")}
    assert ids == {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|extra_0|>": 151646,
                   "<|extra_204|>": 151850}
    assert tok("a<|extra_7|>b", add_special_tokens=False)["input_ids"] == [64, 151653, 65]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and tok.model_max_length == 2048
    gen = json.loads((imported / "generation_config.json").read_text())
    assert set(gen["eos_token_id"]) == {151643, 151645} and gen["top_p"] == 0.8  # sampling kept from the source


def test_chat_template_renders_the_tutorials_chatml(imported, reference):
    tok = AutoTokenizer.from_pretrained(imported, fix_mistral_regex=False)
    # reference text 0 is what the tutorial's model.chat(tokenizer, "你是谁？", system=persona) feeds Qwen-1
    # (make_context's ChatML); its ids came from QWenTokenizer.
    assert prompt_ids(tok, [{"role": "user", "content": "你是谁？"}], PERSONA) == reference["ids"][0]
    # Reference text 4 is one whole trained turn in ChatML.
    turn = [{"role": "user", "content": "小主，该歇息了"},
            {"role": "assistant", "content": "嗯，知道了。"}]
    encoded = encode_conversations(tok, [turn], persona="", max_length=512)[0]
    assert encoded.input_ids == reference["ids"][4]
    # The tutorial's process_func builds the same text by hand, except that its .strip() drops the newline after
    # the user's <|im_end|>; with that newline our ids are its ids, and only the answer and <|im_end|> train.
    example = {"instruction": "你是谁？", "input": "", "output": "家父是大理寺少卿甄远道。"}
    instruction = tok("\n".join(["<|im_start|>system", PERSONA + "<|im_end|>" + "\n<|im_start|>user\n"
                                 + example["instruction"] + example["input"] + "<|im_end|>\n"]).strip(),
                      add_special_tokens=False)["input_ids"]
    response = tok("<|im_start|>assistant\n" + example["output"] + "<|im_end|>\n", add_special_tokens=False)
    conversation = [{"role": "user", "content": example["instruction"]},
                    {"role": "assistant", "content": example["output"]}]
    ours = encode_conversations(tok, [conversation], persona=PERSONA, max_length=512)[0]
    assert ours.input_ids == instruction + tok("\n", add_special_tokens=False)["input_ids"] + response["input_ids"]
    answer = tok(example["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert [x for x in ours.labels if x != -100] == answer


def test_import_never_runs_the_folders_python(tmp_path):
    src = fixture_copy(tmp_path)
    sentinel = tmp_path / "code-ran"
    for py in src.glob("*.py"):
        py.write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    dest = import_qwen1(src, tmp_path / "out").dest
    AutoModelForCausalLM.from_pretrained(dest, trust_remote_code=False, use_safetensors=True)
    AutoTokenizer.from_pretrained(dest, trust_remote_code=False, fix_mistral_regex=False)
    assert not sentinel.exists()


def test_sharded_input_gives_sharded_output_with_the_same_tensors(tmp_path, imported):
    """The fixture re-saved as 4 shards with an index, as real downloads come."""
    tensors = qwen1_tensors(FIXTURE)
    src = tmp_path / "sharded"
    src.mkdir()
    for f in FIXTURE.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, src / f.name)
    names = sorted(tensors)
    groups = [names[i::4] for i in range(4)]
    weight_map = {}
    for i, group in enumerate(groups, 1):
        file = f"model-{i:05d}-of-00004.safetensors"
        save_file({n: tensors[n] for n in group}, str(src / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(group, file))
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    dest = import_qwen1(src, tmp_path / "out").dest
    assert len(list(dest.glob("model-0000?-of-00004.safetensors"))) == 4
    index = json.loads((dest / "model.safetensors.index.json").read_text())
    assert all((dest / f).is_file() for f in index["weight_map"].values())
    check_model_dir(dest)  # our own loader's checks pass: index complete, no file truncated
    single, sharded = qwen1_tensors(imported), qwen1_tensors(dest)
    assert sorted(single) == sorted(sharded) == sorted(index["weight_map"])
    assert all(torch.equal(single[n], sharded[n]) and sharded[n].dtype == torch.bfloat16 for n in single)


def test_weights_are_split_and_renamed_bit_for_bit(imported):
    src, ours = qwen1_tensors(FIXTURE), qwen1_tensors(imported)
    c_attn = src["transformer.h.1.attn.c_attn.weight"]
    q, k, v = (ours[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(torch.cat([q, k, v]), c_attn)
    assert torch.equal(ours["model.layers.0.mlp.gate_proj.weight"], src["transformer.h.0.mlp.w2.weight"])
    assert torch.equal(ours["lm_head.weight"], src["lm_head.weight"])
    assert sum(t.numel() for t in ours.values()) == sum(t.numel() for t in src.values())


@pytest.mark.parametrize("field, value", [("rotary_pct", 0.5), ("kv_channels", 16), ("no_bias", False),
                                          ("ffn_hidden_size", 183), ("pos_emb", "alibi")])
def test_unrepresentable_configs_are_refused_naming_the_field(tmp_path, field, value):
    src = fixture_copy(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config[field] = value
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=field):
        import_qwen1(src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [src], "nothing half-written beside the destination"


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    src = fixture_copy(tmp_path)
    config = json.loads((src / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="model.layers.2"):
        import_qwen1(src, tmp_path / "out")


def test_cli_imports_with_progress_and_refuses_bad_input_in_one_line(tmp_path):
    dest = tmp_path / "qwen-7b-chat"
    proc = cli("import-model", str(FIXTURE), str(dest), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(dest)
    assert "[import] 100%" in proc.stderr and "use_dynamic_ntk" in proc.stderr
    check_model_dir(dest)  # loads as any model: no auto_map, so no remote-code opt-in asked

    again = cli("import-model", str(FIXTURE), str(dest))
    pickle_only = fixture_copy(tmp_path, "bin-only")
    (pickle_only / "model.safetensors").rename(pickle_only / "pytorch_model.bin")
    not_qwen1 = cli("import-model", str(dest), str(tmp_path / "x"))
    for proc, needle in ((again, "already exists"), (cli("import-model", str(pickle_only), str(tmp_path / "y")),
                                                     "pickle"), (not_qwen1, "not a Qwen-1 checkpoint")):
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin-only", "qwen-7b-chat"]


def test_training_on_the_raw_qwen1_folder_points_at_the_import(tmp_path):
    with pytest.raises(UserError, match="import-model"):
        check_model_dir(FIXTURE)


def test_max_length_past_seq_length_is_flagged(imported):
    assert lint_imported_length(imported, 2048) == []
    [lint] = lint_imported_length(imported, 4096)
    assert lint.level == "warning" and "seq_length 2048" in str(lint.message)
    cfg = load_config(PROJECT_ROOT / QUICKSTART, [f"model.path={imported}", "data.max_length=4096"])
    assert "qwen1-seq-length" in [x.code for x in plan(cfg, memory=False).lints], "plan, train and the Train page show it"
    assert json.loads((imported / MARKER).read_text())["source"] == str(FIXTURE.resolve())


def test_round_trip_qwen1_to_qwen2_to_qwen1_gives_back_identical_tensors(tmp_path, imported):
    back = export_qwen1(imported, FIXTURE, tmp_path / "back")
    original, returned = qwen1_tensors(FIXTURE), qwen1_tensors(back)
    assert sorted(original) == sorted(returned)
    assert all(torch.equal(original[n], returned[n]) and returned[n].dtype == original[n].dtype for n in original)
    for name in ("config.json", "modeling_qwen.py", "tokenization_qwen.py", "qwen.tiktoken", "generation_config.json"):
        assert (back / name).read_bytes() == (FIXTURE / name).read_bytes(), name
    assert [f.name for f in tmp_path.iterdir()] == ["back"], "no temporary folder left"


def test_fine_tuned_fp32_weights_go_back_in_the_originals_dtype(tmp_path, imported):
    """What `export` consolidates is fp32: it is cast back to the original's bf16, one tensor at a time."""
    fp32 = tmp_path / "fp32"
    fp32.mkdir()
    state = {n: t.float() for n, t in qwen1_tensors(imported).items()}
    state["model.layers.0.self_attn.k_proj.bias"] += 1.0  # a "trained" change that must land in c_attn's middle third
    save_file(state, str(fp32 / "model.safetensors"))
    back = qwen1_tensors(export_qwen1(fp32, FIXTURE, tmp_path / "back"))
    original = qwen1_tensors(FIXTURE)
    assert all(t.dtype == torch.bfloat16 for t in back.values())
    h = 32
    bias = back["transformer.h.0.attn.c_attn.bias"]
    expected = original["transformer.h.0.attn.c_attn.bias"].float()
    expected[h:2 * h] += 1.0
    assert torch.equal(bias, expected.to(torch.bfloat16))
    assert torch.equal(back["transformer.h.1.mlp.w2.weight"], original["transformer.h.1.mlp.w2.weight"])


def test_qwen1_export_is_refused_for_models_that_were_not_imported(starter_model):
    with pytest.raises(UserError, match="not imported from a Qwen-1"):
        imported_from(starter_model)


MEMORY_PROBE = """
import json, sys
from pathlib import Path
from trainer_core.models import qwen1_import

def rss(field):
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1]) * 1024

Path('/proc/self/clear_refs').write_text('5')  # reset the peak (VmHWM) to the current RSS
base, peak = rss('VmRSS'), []
def progress(done, total, name):
    if done == total and not peak:  # the weights are written; the tokenizer build that follows is not measured
        peak.append(rss('VmHWM'))
qwen1_import.import_qwen1(sys.argv[1], sys.argv[2], progress=progress)
print(json.dumps({'base': base, 'peak': peak[0]}))
"""


@pytest.mark.slow
def test_import_peak_memory_stays_within_one_shard(tmp_path):
    """A wider Qwen-1 (hidden 256: each embedding 78 MB) in 4 shards; a converter that loaded the model, or even
    two shards, would grow by more than the largest shard."""
    config = json.loads((FIXTURE / "config.json").read_text())
    h, m, layers, vocab = 256, 688, 4, config["padded_vocab_size"]
    config.update(hidden_size=h, n_embd=h, kv_channels=h // 4, ffn_hidden_size=2 * m, num_hidden_layers=layers,
                  n_layer=layers)
    src = tmp_path / "wide"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(config))
    shutil.copy(FIXTURE / "qwen.tiktoken", src / "qwen.tiktoken")
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(torch.bfloat16)

    shards = [{"transformer.wte.weight": rand(vocab, h)}, {}, {}, {"lm_head.weight": rand(vocab, h)}]
    for i in range(layers):
        shards[1 + i // 2].update({f"transformer.h.{i}.attn.c_attn.weight": rand(3 * h, h),
                                   f"transformer.h.{i}.attn.c_attn.bias": rand(3 * h),
                                   f"transformer.h.{i}.attn.c_proj.weight": rand(h, h),
                                   f"transformer.h.{i}.ln_1.weight": rand(h), f"transformer.h.{i}.ln_2.weight": rand(h),
                                   f"transformer.h.{i}.mlp.w1.weight": rand(m, h),
                                   f"transformer.h.{i}.mlp.w2.weight": rand(m, h),
                                   f"transformer.h.{i}.mlp.c_proj.weight": rand(h, m)})
    shards[2]["transformer.ln_f.weight"] = rand(h)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-00004.safetensors"
        save_file(shard, str(src / file))
        weight_map.update(dict.fromkeys(shard, file))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    del shards
    sizes = [f.stat().st_size for f in src.glob("*.safetensors")]
    largest, total = max(sizes), sum(sizes)
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(src), str(tmp_path / "out")], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = figures["peak"] - figures["base"]
    mib = 1024**2
    print(f"input {total / mib:.0f} MiB in 4 shards, largest {largest / mib:.0f} MiB; "
          f"peak RSS growth while converting {growth / mib:.1f} MiB")
    assert total > 2 * largest
    assert growth < largest, "the converter held more than one shard's worth of weights"
    out = qwen1_tensors(tmp_path / "out")
    assert torch.equal(out["model.embed_tokens.weight"][:3], load_rows(src, "transformer.wte.weight", 3))


def load_rows(folder: Path, name: str, n: int) -> torch.Tensor:
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            if name in st.keys():
                return st.get_slice(name)[:n]
    raise KeyError(name)


# ------------------------------------------------------------------ the imported model through the normal path (slow)


def trained_run(imported: Path, **sets) -> Path:
    args = []
    for k, v in {"model.path": imported, "train.epochs": 1, "data.eval_ratio": 0, "train.logging_steps": 1,
                 **sets}.items():
        args += ["--set", f"{k}={v}"]
    proc = cli("train", QUICKSTART, *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert protocol.read_status(run).state == protocol.COMPLETED
    return run


@pytest.mark.slow
def test_imported_model_trains_zero2_offload_chats_and_exports(runs_root, imported):
    run = trained_run(imported, **{"train.max_steps": 3, "train.save_steps": 3, "deepspeed.stage": 2,
                                   "deepspeed.offload_optimizer": "cpu", "name": "qwen1-z2"})
    rows = [r for r in read_all_rows(run / protocol.METRICS) if r.get("loss") is not None]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in rows)
    final = run / protocol.FINAL
    model = AutoModelForCausalLM.from_pretrained(final, trust_remote_code=False, use_safetensors=True)
    assert type(model).__name__ == "Qwen2ForCausalLM" and not model.config.tie_word_embeddings
    base = qwen1_tensors(FIXTURE)["lm_head.weight"].float()
    assert not torch.equal(model.state_dict()["lm_head.weight"], base), "final/ holds the untrained weights"
    tok = AutoTokenizer.from_pretrained(final, fix_mistral_regex=False)
    assert tok.convert_tokens_to_ids("<|extra_0|>") == 151646 and tok.chat_template

    reply = cli("chat", str(run), "--prompt", "你是谁", "--max-new-tokens", "8", "--seed", "0", check=True)
    assert reply.stdout.strip(), "chat printed no reply"
    out = Path(cli("export", str(run), "--format", "qwen1", check=True).stdout.strip().splitlines()[-1])
    assert out.name == "checkpoint-3-qwen1"
    exported = AutoModelForCausalLM.from_pretrained(out.with_name("checkpoint-3"), use_safetensors=True).state_dict()
    saved = qwen1_tensors(protocol.complete_checkpoints(run)[-1])
    assert torch.allclose(exported["lm_head.weight"], saved["lm_head.weight"].float())
    # The Qwen-1 copy: the tutorial's own names, dtype and code files, holding the fine-tuned weights.
    qwen1 = qwen1_tensors(out)
    assert sorted(qwen1) == sorted(qwen1_tensors(FIXTURE)) and (out / "modeling_qwen.py").is_file()
    assert torch.equal(qwen1["lm_head.weight"], exported["lm_head.weight"].to(torch.bfloat16))
    q, k, v = (exported[f"model.layers.1.self_attn.{p}_proj.weight"] for p in "qkv")
    assert torch.equal(qwen1["transformer.h.1.attn.c_attn.weight"], torch.cat([q, k, v]).to(torch.bfloat16))


@pytest.mark.slow
def test_imported_model_trains_on_two_ranks_zero3(runs_root, imported):
    run = trained_run(imported, **{"train.max_steps": 2, "train.save_steps": 2, "deepspeed.stage": 3,
                                   "deepspeed.offload_optimizer": "none", "placement.num_ranks": 2,
                                   "name": "qwen1-z3"})
    assert protocol.read_status(run).world_size == 2
    state = AutoModelForCausalLM.from_pretrained(run / protocol.FINAL, use_safetensors=True).state_dict()
    # ZeRO-3 gathered the real weights on save, the untied lm_head included.
    assert state["model.embed_tokens.weight"].shape == state["lm_head.weight"].shape == (151936, 32)
    assert not torch.equal(state["model.embed_tokens.weight"], state["lm_head.weight"])


# ------------------------------------------------------------------ the Train page (AppTest)

from app.i18n import ZH  # noqa: E402
from test_app_pages import app, goto, texts, uploads, warm_server  # noqa: E402,F401  (page fixtures)
from trainer_core.common import paths  # noqa: E402


def test_train_page_offers_the_import_instead_of_the_remote_code_box(app, tmp_path, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    monkeypatch.setattr(paths, "MODELS_DIR", models)  # the converted folder lands here, not in the real models/
    goto(app, "pages/train.py")
    assert app.checkbox(key="p.f.model.trust_remote_code") is not None
    app.selectbox(key="p.f.model.choice").set_value("__other__").run()
    app.text_input(key="p.f.model.path").set_value(str(FIXTURE)).run()
    assert not app.exception
    assert "p.f.model.trust_remote_code" not in [c.key for c in app.checkbox]
    assert ZH["qwen1.offer"] in texts(app, "info")
    assert any("import-model" in e for e in texts(app, "error")), "the raw folder cannot be launched"

    assert app.text_input(key="train.qwen1_dest").value == "qwen1-tiny-qwen2"  # suggested from the source's name
    app.text_input(key="train.qwen1_dest").set_value("../escape").run()
    app.button(key="train.qwen1_import").click().run()
    assert ZH["qwen1.bad_name"].format(name="../escape") in texts(app, "error")
    assert not list(models.iterdir()) and not (tmp_path / "escape").exists()

    app.text_input(key="train.qwen1_dest").set_value("qwen-7b-chat").run()
    app.button(key="train.qwen1_import").click().run()
    assert not app.exception
    dest = models / "qwen-7b-chat"
    assert json.loads((dest / "config.json").read_text())["model_type"] == "qwen2"
    assert app.selectbox(key="p.f.model.choice").value == str(dest.resolve()), "the new folder is selected"
    assert ZH["qwen1.done"].format(dest=dest) in texts(app, "success")
    assert ZH["qwen1.not_carried"].format(seq_length=2048) in texts(app, "caption")
    assert app.checkbox(key="p.f.model.trust_remote_code").value is False
    assert not any("import-model" in e for e in texts(app, "error")) and ZH["plan.fits"] in texts(app, "success")
