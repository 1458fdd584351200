"""Did the model become the persona? Evaluate a run's models (base, checkpoints, final) on its own held-out records
and on identity probes, and store one JSON per model in the run's `eval/` folder.

Everything is local and repeatable: greedy decoding with a fixed seed, at most `max_records` held-out records, replies
generated in batches. A stopped evaluation writes nothing (results are written whole, atomically, at the end), so a
partial result is never counted. The figures' formulas live in `metrics.py`, `persona_signals.py` and
docs/persona_eval.md.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from trainer_core.common import paths
from trainer_core.common.errors import UserError
from trainer_core.evaluation import metrics as m
from trainer_core.evaluation import persona_signals as ps
from trainer_core.common import atomic
from trainer_core.runs import outputs
from trainer_core.runs import protocol

EVAL_DIR = "eval"
PROBES_FILE = "probes.json"  # in eval/: the probe set the run's evaluations used (editable, then re-run)
LEXICON_FILE = "lexicon.json"  # in eval/: the persona lexicon every result's lexicon_rate is scored with
BASE = "base"
DEFAULT_PROBES = {lang: paths.CONFIGS_DIR / "probes" / f"persona_{lang}.json" for lang in ("zh", "en")}
MAX_TRAINING_ANSWERS = 2000  # answers the lexicon and the style fingerprint are taken from (the first, in split order)


@dataclass
class EvalSettings:
    """How an evaluation runs; stored with every result so two results can be compared only when these agree."""

    max_records: int = 200
    """Held-out records evaluated at most (the run's own split, in its order)."""
    max_new_tokens: int = 128
    """Longest reply, in tokens; a reply that reaches it did not end by itself."""
    batch_size: int = 8
    """Replies generated (and answers scored) together."""
    seed: int = 0
    """Seed set before generation (greedy decoding needs none, a model with dropout left on would)."""

    def __post_init__(self) -> None:
        for name, lo, hi in (("max_records", 1, 10_000), ("max_new_tokens", 1, 4096), ("batch_size", 1, 256),
                             ("seed", 0, 2**32 - 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or not lo <= value <= hi:
                raise UserError("eval.out_of_range", "{field} must be a whole number from {lo:,} to {hi:,} (got "
                                "{value})", field=name, lo=lo, hi=hi, value=value)


@dataclass
class Probes:
    """The identity probes and what counts as staying in character; a JSON file, editable, saved with the run."""

    language: str
    """"zh" or "en": picks the default out-of-character patterns."""
    identity: list[str]
    """Questions about who the model is (你是谁？ 你是AI吗？ …)."""
    names: list[str] = field(default_factory=list)
    """The persona's names; empty: read from the persona text."""
    ai_patterns: list[str] = field(default_factory=list)
    """Regular expressions of out-of-character claims; empty: the language's defaults."""

    @classmethod
    def load(cls, path: Path) -> "Probes":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError("eval.probes_unreadable", "probe file {path} cannot be read: {reason}", path=str(path),
                            reason=str(e).splitlines()[0][:200]) from None
        if not isinstance(data, dict) or not isinstance(data.get("identity"), list) or not data["identity"] \
                or not all(isinstance(q, str) and q.strip() for q in data["identity"]):
            raise UserError("eval.probes_shape", "probe file {path} needs an \"identity\" list of questions",
                            path=str(path))
        lists = {k: data.get(k) or [] for k in ("names", "ai_patterns")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()):
            raise UserError("eval.probes_lists", "probe file {path}: names and ai_patterns must be lists of text",
                            path=str(path))
        return cls(language=str(data.get("language") or ps.language(" ".join(data["identity"]))),
                   identity=list(data["identity"]), **lists)


@dataclass
class HeldOut:
    """The run's held-out records as prompts and reference answers, and the training answers."""

    prompts: list[list[dict]]
    """Each record's conversation up to (not including) its last answer."""
    references: list[str]
    """Each record's last answer."""
    conversations: list[list[dict]]
    """Each whole record (for answer_nll: every assistant turn is scored, as training labels them)."""
    training_answers: list[str]
    """Answers of training records, for the lexicon and the style fingerprint."""


class Cancelled(Exception):
    """The evaluation was stopped; nothing was written."""


def eval_dir(run: Path) -> Path:
    return Path(run) / EVAL_DIR


def result_path(run: Path, label: str) -> Path:
    return eval_dir(run) / f"{label}.json"


def read_results(run: Path) -> dict[str, dict]:
    """Every stored result of a run by model label, base first, then checkpoints by step, then final."""
    out = {}
    for p in sorted(eval_dir(run).glob("*.json")):
        if p.name in (PROBES_FILE, LEXICON_FILE):
            continue
        data = atomic.read_json(p)
        if isinstance(data, dict) and "metrics" in data:
            out[p.stem] = data
    return dict(sorted(out.items(), key=lambda kv: _label_order(kv[0])))


def _label_order(label: str) -> tuple[int, int]:
    if label == BASE:
        return 0, 0
    if label.startswith("checkpoint-") and label[11:].isdigit():
        return 1, int(label[11:])
    return (3, 0) if label.startswith(CHAT_PROBE) else (2, 0)


def held_out(cfg, max_records: int) -> HeldOut:
    """The run's held-out records (the split training used) and its first training answers, read from its data in
    one pass: each usable record is kept as compact JSON text (about the file's size, which load_dataset bounds)
    until the count fixes the split, then only the records wanted are decoded."""
    from trainer_core.data.dataset import load_dataset
    from trainer_core.data.split import held_out_split

    records: list[bytes] = []
    load_dataset(cfg.data.path, keep=False,
                 on_usable=lambda _row, c: records.append(json.dumps(c, ensure_ascii=False).encode()))
    eval_idx, train_idx = held_out_split(len(records), seed=cfg.train.seed, eval_ratio=cfg.data.eval_ratio,
                                         max_eval=cfg.data.max_eval_records)
    if not eval_idx:
        raise UserError("eval.no_held_out", "the run holds out no records (data.eval_ratio is 0); evaluation needs "
                        "held-out answers")
    conversations = [json.loads(records[i]) for i in eval_idx[:max_records]]
    training_answers = [t["content"] for i in sorted(train_idx[:MAX_TRAINING_ANSWERS])  # in file order
                        for t in json.loads(records[i]) if t["role"] == "assistant"]
    del records
    last = [max(j for j, t in enumerate(c) if t["role"] == "assistant") for c in conversations]
    return HeldOut(prompts=[c[:j] for c, j in zip(conversations, last)],
                   references=[c[j]["content"] for c, j in zip(conversations, last)],
                   conversations=conversations, training_answers=training_answers)


def models_of(run: Path, checkpoint: str | None) -> list[tuple[str, Path]]:
    """(label, folder) of the models to evaluate: `None` the final model (or the newest complete checkpoint),
    "all" every complete checkpoint and the final model, or one step."""
    run = Path(run)
    if checkpoint == "all":
        found = [(p.name, p) for p in outputs.trained_models(run)]
        if not found:
            raise UserError("models.run_has_no_model", "run {run} has no final model and no complete checkpoint yet",
                            run=run.name)
        return found
    step = None
    if checkpoint is not None:
        if not str(checkpoint).isdigit():
            raise UserError("eval.bad_checkpoint", "--checkpoint takes a step number or \"all\" (got {value})",
                            value=checkpoint)
        step = int(checkpoint)
    folder = outputs.model_dir(run, step)
    return [(folder.name, folder)]


def estimate(n_records: int, n_probes: int, settings: EvalSettings, n_models: int) -> dict:
    """What an evaluation will do, before it starts: replies to generate and the most tokens they can take."""
    replies = n_records + n_probes
    return {"models": n_models, "records": n_records, "probes": n_probes, "replies": replies * n_models,
            "max_new_tokens": replies * n_models * settings.max_new_tokens}


def evaluate_model(model_dir: Path, *, persona: str, data: HeldOut, probes: Probes, settings: EvalSettings,
                   cancel: threading.Event | None = None, progress: Callable[[int, int], None] | None = None,
                   trust_remote_code: bool = False) -> dict:
    """Generate every held-out and probe reply, score the answers, and return the result (without lexicon_rate,
    which `score_lexicon` adds once the run's lexicon is known)."""
    from trainer_core.models.inference import load_chat_model, on_inference_thread
    from trainer_core.runs import chat_device

    cancel = cancel or threading.Event()
    device = chat_device.choose().device  # a GPU no live run holds, as for chat (or a refusal naming the runs)
    model, tok = load_chat_model(model_dir, trust_remote_code=trust_remote_code, device=device)
    try:
        return on_inference_thread(_evaluate_loaded, model, tok, persona, data, probes, settings, cancel,
                                   progress).result() | {"model": str(model_dir), "device": device}
    finally:
        del model
        if device.startswith("cuda"):
            import gc

            gc.collect()
            torch.cuda.empty_cache()


def _evaluate_loaded(model, tok, persona: str, data: HeldOut, probes: Probes, settings: EvalSettings,
                     cancel: threading.Event, progress) -> dict:
    started = time.monotonic()
    torch.manual_seed(settings.seed)
    prompts = data.prompts + [[{"role": "user", "content": q}] for q in probes.identity]
    total = len(prompts) + len(data.conversations)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    replies, ended = generate_replies(model, tok, prompts, persona=persona, settings=settings, cancel=cancel,
                                      on_batch=tick)
    nll, n_tokens = answer_nll(model, tok, data.conversations, persona=persona, settings=settings, cancel=cancel,
                               on_batch=tick)
    held, probe_replies = replies[:len(data.prompts)], replies[len(data.prompts):]
    names = probes.names or ps.persona_names(persona)
    patterns = probes.ai_patterns or ps.AI_CLAIMS.get(probes.language, ps.AI_CLAIMS["en"])
    metrics = {
        "answer_nll": nll,
        "perplexity": m.perplexity(nll),
        "rouge_l": sum(m.rouge_l(r, ref) for r, ref in zip(held, data.references)) / len(held),
        "bleu4": m.bleu4(held, data.references),
        "ends_by_itself": m.share(ended),
        **identity_metrics(probe_replies, names, patterns),
        "style_js": m.style_js(replies, data.training_answers),
        "distinct_2": m.distinct_2(replies),
        "repetition": sum(m.repetition(r) for r in replies) / len(replies),
        "length_ratio": m.length_ratio(held, data.references),
    }
    return {"metrics": metrics, "settings": asdict(settings), "persona": persona, "names": names,
            "ai_patterns": patterns, "n_records": len(held), "n_probes": len(probe_replies),
            "n_answer_tokens": n_tokens, "seconds": round(time.monotonic() - started, 2),
            "replies": {"held_out": held, "probes": probe_replies, "ended": ended}}


def identity_metrics(probe_replies: list[str], names: list[str], patterns: list[str]) -> dict[str, float]:
    """identity_in_persona (share of probe replies naming the persona) and breaks_character (share claiming to be an
    AI, an assistant or a model)."""
    return {"identity_in_persona": m.share(ps.names_persona(r, names) for r in probe_replies),
            "breaks_character": m.share(ps.breaks_character(r, patterns) for r in probe_replies)}


CHAT_PROBE = "chat-probe-"
"""Label prefix of results sent from the Chat page's persona probe."""


def store_chat_probe(run: Path, model: str, *, model_dir: Path, persona: str, prompts: list[str],
                     replies: list[str]) -> str:
    """Store the Chat page's persona-probe replies of one model of a run as a result in eval/ labelled
    chat-probe-<model>: identity metrics as an evaluation computes them (names and patterns from the run's probe
    file when it has one), lexicon_rate when the run has a lexicon. Returns the label."""
    if not replies:
        raise UserError("eval.probe_empty", "the persona probe has no replies to send to the evaluation")
    saved = eval_dir(run) / PROBES_FILE
    probes = Probes.load(saved) if saved.is_file() else Probes(language=ps.language(persona), identity=prompts)
    names = probes.names or ps.persona_names(persona)
    patterns = probes.ai_patterns or ps.AI_CLAIMS.get(probes.language, ps.AI_CLAIMS["en"])
    label = CHAT_PROBE + re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    result = {"label": label, "source": "chat_probe", "model": str(model_dir), "persona": persona, "names": names,
              "ai_patterns": patterns, "n_records": 0, "n_probes": len(replies), "prompts": list(prompts),
              "metrics": identity_metrics(replies, names, patterns),
              "replies": {"held_out": [], "probes": list(replies), "ended": []}}
    words = (atomic.read_json(eval_dir(run) / LEXICON_FILE) or {}).get("lexicon")
    if words:
        result = score_lexicon(result, words)
    eval_dir(run).mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(result_path(run, label), result)
    return label


def generate_replies(model, tok, prompts: list[list[dict]], *, persona: str, settings: EvalSettings,
                     cancel: threading.Event, on_batch=None) -> tuple[list[str], list[bool]]:
    """Greedy replies to each prompt, `batch_size` at a time (left-padded), and whether each ended by itself (an
    end-of-turn or end-of-text id before max_new_tokens). A set `cancel` ends generation within a token."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    from trainer_core.data.chat_format import prompt_ids
    from trainer_core.models.inference import reply_stop_ids

    class Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return cancel.is_set()

    stop_ids = reply_stop_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    device = next(model.parameters()).device
    replies: list[str] = []
    ended: list[bool] = []
    for start in range(0, len(prompts), settings.batch_size):
        batch = [prompt_ids(tok, p, persona) for p in prompts[start:start + settings.batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch], device=device)
        mask = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=
                                 settings.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad,
                                 stopping_criteria=StoppingCriteriaList([Stop()]), temperature=None, top_p=None,
                                 top_k=None)
        if cancel.is_set():
            raise Cancelled()
        for row in out[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stop_ids), None)
            ended.append(cut is not None)
            replies.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        if on_batch:
            on_batch(len(batch))
    return replies, ended


def answer_nll(model, tok, conversations: list[list[dict]], *, persona: str, settings: EvalSettings,
               cancel: threading.Event, on_batch=None) -> tuple[float, int]:
    """Mean negative log-likelihood per labelled answer token (labelled exactly as training labels them), and how
    many tokens that mean is over."""
    from trainer_core.data.chat_format import IGNORE_INDEX, encode_conversations

    ctx = getattr(model.config, "max_position_embeddings", None) or 2048
    encoded = encode_conversations(tok, conversations, persona=persona, max_length=int(ctx))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(encoded), settings.batch_size):
        if cancel.is_set():
            raise Cancelled()
        batch = encoded[start:start + settings.batch_size]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [0] * (width - len(e.input_ids)) for e in batch], device=device)
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in batch], device=device)
        mask = (torch.arange(width)[None, :] < torch.tensor([len(e.input_ids) for e in batch])[:, None]).to(device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask.long()).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX,
                                                 reduction="sum")
        total += float(loss)
        count += int((labels[:, 1:] != IGNORE_INDEX).sum())
        if on_batch:
            on_batch(len(batch))
    return (total / count if count else float("nan")), count


def lexicon(run: Path, data: HeldOut, base_replies: list[str] | None) -> list[str]:
    """The run's persona lexicon: eval/lexicon.json when the user edited it or it was mined against the base model,
    else mined from the training answers against the base model's replies (when known) and saved there."""
    path = eval_dir(run) / LEXICON_FILE
    stored = atomic.read_json(path)
    if isinstance(stored, dict) and isinstance(stored.get("lexicon"), list) and (
            stored.get("edited") or stored.get("mined_against_base") or base_replies is None):
        return [str(x) for x in stored["lexicon"]]
    mined = ps.mine_lexicon(data.training_answers, base_replies or [])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json_atomic(path, {"lexicon": mined, "mined_against_base": base_replies is not None})
    return mined


def score_lexicon(result: dict, words: list[str]) -> dict:
    """Add `lexicon_rate` (share of all replies using a lexicon entry) to a result, from its stored replies."""
    replies = result["replies"]["held_out"] + result["replies"]["probes"]
    result["metrics"]["lexicon_rate"] = m.share(ps.uses_lexicon(r, words) for r in replies)
    result["lexicon"] = list(words)
    return result


def rescore(run: Path) -> dict[str, dict]:
    """Re-score every stored result's lexicon_rate with the run's current lexicon (after it was edited)."""
    words = (atomic.read_json(eval_dir(run) / LEXICON_FILE) or {}).get("lexicon") or []
    results = read_results(run)
    for label, result in results.items():
        atomic.write_json_atomic(result_path(run, label), score_lexicon(result, words))
    return results


def compare_to_base(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Each result's change in every metric against the base row (empty without a base result)."""
    base = results.get(BASE)
    if not base:
        return {}
    return {label: {k: v - base["metrics"][k] for k, v in r["metrics"].items()
                    if isinstance(base["metrics"].get(k), (int, float))}
            for label, r in results.items() if label != BASE}


def default_probes(persona: str) -> Path:
    return DEFAULT_PROBES[ps.language(persona)]


def evaluate_run(run: Path, *, checkpoint: str | None = None, base: bool = False, probes_file: Path | None = None,
                 settings: EvalSettings | None = None, cancel: threading.Event | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, dict]:
    """Evaluate a run's models (and its base model with `base`), store each result in eval/<label>.json as it
    completes, and return every stored result. `progress(label, done, total)` hears each batch."""
    from trainer_core.config.run_config import load_config

    run = Path(run)
    settings = settings or EvalSettings()
    cfg = load_config(run / protocol.CONFIG)
    targets = models_of(run, checkpoint)
    if base:
        targets.insert(0, (BASE, Path(cfg.model.path)))
    persona = cfg.data.persona
    saved_probes = eval_dir(run) / PROBES_FILE
    probes_path = Path(probes_file) if probes_file else (saved_probes if saved_probes.is_file()
                                                         else default_probes(persona))
    probes = Probes.load(probes_path)
    data = held_out(cfg, settings.max_records)
    eval_dir(run).mkdir(parents=True, exist_ok=True)
    if probes_path != saved_probes:
        atomic.write_json_atomic(saved_probes, asdict(probes))
    fresh: dict[str, dict] = {}
    for label, folder in targets:
        result = evaluate_model(folder, persona=persona, data=data, probes=probes, settings=settings,
                                cancel=cancel, trust_remote_code=cfg.model.trust_remote_code,
                                progress=(lambda d, t, label=label: progress(label, d, t)) if progress else None)
        fresh[label] = result | {"label": label}
        stored_base = fresh.get(BASE) or read_results(run).get(BASE)
        base_replies = None
        if stored_base:
            base_replies = stored_base["replies"]["held_out"] + stored_base["replies"]["probes"]
        words = lexicon(run, data, base_replies)
        atomic.write_json_atomic(result_path(run, label), score_lexicon(fresh[label], words))
    return rescore(run)
