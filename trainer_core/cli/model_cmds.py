"""`chat`, `export` and `import-model`: using what a run produced, and bringing models in."""

from __future__ import annotations

import sys
from pathlib import Path

from trainer_core.cli.common import bounded, emit, run_dir, write_out
from trainer_core.common.errors import UserError


def _note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_chat(args) -> int:
    from trainer_core.config.sections import MAX_SEED, MAX_STEPS
    from trainer_core.data.chat_template import specials_in
    from trainer_core.models.inference import (MAX_NEW_TOKENS_RANGE, TEMPERATURE_RANGE, GenParams, load_chat_model,
                                               stream_reply)
    from trainer_core.runs import outputs
    from trainer_core.runs.chat_device import choose

    if not args.prompt.strip():
        raise UserError("cli.empty_prompt", "--prompt is empty; give the line the model should answer")
    # The engine's own limits (GenParams), checked here too so that the refusal names the flag.
    bounded(args.max_new_tokens, "--max-new-tokens", *MAX_NEW_TOKENS_RANGE)
    bounded(args.temperature, "--temperature", *TEMPERATURE_RANGE)
    bounded(args.seed, "--seed", 0, MAX_SEED)
    bounded(args.checkpoint, "--checkpoint", 0, MAX_STEPS)
    model_dir = outputs.model_dir(_model_or_run(args.model), args.checkpoint)
    device = choose()  # a GPU no training run holds, or a refusal naming the runs
    model, tok = load_chat_model(model_dir, trust_remote_code=args.trust_remote_code, device=device.device)
    _note(f"device: {device.describe()}")  # once loaded: a refusal of the model stays the only line
    persona = outputs.chat_persona(model_dir, args.persona)
    params = GenParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    # Which system prompt is in use goes to stderr, so stdout stays the reply alone.
    _note("persona: --persona" if persona.source == outputs.PERSONA_GIVEN
          else "persona: the one the run was trained with" if persona.trained
          else "persona: none; the model's own default system prompt (--persona sets one)")
    for content, what in ((persona.text, "persona"), (args.prompt, "prompt")):
        if found := specials_in(tok, content):
            _note(f"warning: the {what} holds special token {', '.join(found)}; it is read as plain text")
    for piece in stream_reply(model, tok, [{"role": "user", "content": args.prompt}], persona=persona.text,
                              params=params):
        write_out(piece)
    emit()
    return 0


def _model_or_run(ref: str) -> Path:
    """A model folder, a run directory, or a run's name (as status/stop/export accept it)."""
    from trainer_core.common import paths
    from trainer_core.runs import protocol

    p = Path(ref).expanduser()
    if p.is_dir():
        return p
    if "/" not in ref and (paths.runs_root() / ref / protocol.CONFIG).is_file():
        return run_dir(ref)
    raise UserError("cli.no_model_or_run", "{ref}: no such model folder or run; give a model directory, a run "
                    "directory or a run name (`python -m trainer_core runs` lists them)", ref=ref)


def cmd_export(args) -> int:
    from trainer_core.config.sections import MAX_STEPS
    from trainer_core.runs.outputs import export_checkpoint

    bounded(args.checkpoint, "--checkpoint", 0, MAX_STEPS)
    run = run_dir(args.run)
    if _adapter_run(run, args):
        from trainer_core.runs.outputs import export_adapter_run

        emit(export_adapter_run(run, args.checkpoint, merge=args.merge,
                                persona_in_template=not args.no_persona_template))
        return 0
    if args.format == "qwen1":  # checked before the consolidation, which can take minutes
        from trainer_core.config.run_config import load_config
        from trainer_core.models.qwen1_export import export_qwen1
        from trainer_core.models.qwen1_import import imported_from
        from trainer_core.runs import protocol

        original = imported_from(load_config(run / protocol.CONFIG).model.path)
    out = export_checkpoint(run, args.checkpoint, persona_in_template=not args.no_persona_template)
    if args.format == "qwen1":
        out = export_qwen1(out, original, out.with_name(f"{out.name}-qwen1"))
    emit(out)
    return 0


def _adapter_run(run: Path, args) -> bool:
    """Whether the run trained adapters (lora/qlora); --merge on any other run, or with --format qwen1, is refused."""
    from trainer_core.config.run_config import load_config
    from trainer_core.models.adapters import uses_adapter
    from trainer_core.runs import protocol

    method = load_config(run / protocol.CONFIG).train.method
    if args.merge and not uses_adapter(method):
        raise UserError("cli.merge_full_run", "--merge applies to lora and qlora runs; run {run} trained every "
                        "weight (train.method {method}), so its export is already a full model", run=run.name,
                        method=method)
    if uses_adapter(method) and args.format != "hf":
        raise UserError("cli.adapter_format", "--format {format} is not available for a {method} run; export it "
                        "with --merge and convert the merged model", format=args.format, method=method)
    return uses_adapter(method)


def cmd_import_model(args) -> int:
    from trainer_core.config.memory import fmt_bytes
    from trainer_core.models.qwen1_import import import_qwen1

    shown = [-1]

    def progress(done: int, total: int, name: str) -> None:
        percent = 100 * done // max(total, 1)
        if percent != shown[0] or done == total:  # one line per percent, however many tensors
            shown[0] = percent
            _note(f"[import] {percent:3d}%  {fmt_bytes(done)} / {fmt_bytes(total)}  {name}")

    result = import_qwen1(args.src, args.dest, progress=progress)
    for note in result.notes:
        _note(f"note: {note}")
    _note(f"imported {result.n_tensors} tensors ({fmt_bytes(result.nbytes)}) as a Qwen2 model; no remote code needed")
    emit(result.dest)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("chat", help="one reply from a model folder or a run")
    s.add_argument("model")
    s.add_argument("--prompt", required=True)
    s.add_argument("--persona", default=None, help="system prompt (default: the run's persona; for a plain model "
                                                   "folder, the model's own default system prompt)")
    s.add_argument("--max-new-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--checkpoint", type=int, default=None)
    s.add_argument("--trust-remote-code", action="store_true")
    s.set_defaults(fn=cmd_chat)

    s = sub.add_parser("export", help="consolidate a ZeRO checkpoint to safetensors")
    s.add_argument("run")
    s.add_argument("--checkpoint", type=int, default=None)
    s.add_argument("--format", choices=("hf", "qwen1"), default="hf",
                   help="qwen1: also write the weights back in Qwen-1 names next to the original folder's code, "
                        "for runs of a model brought in with import-model")
    s.add_argument("--no-persona-template", action="store_true",
                   help="keep the model's own chat template (by default the trained persona becomes its default "
                        "system prompt, for users who pass none)")
    s.add_argument("--merge", action="store_true",
                   help="lora/qlora runs: write the base with the adapter merged in, a full model that loads without "
                        "peft (without it: the adapter, with a pointer to its base)")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("import-model", help="convert a Qwen-1 (Qwen-7B-Chat) folder into a native Qwen2 folder")
    s.add_argument("src", help="the downloaded Qwen-1 folder (config.json, *.safetensors, qwen.tiktoken)")
    s.add_argument("dest", help="new folder to create, e.g. models/qwen-7b-chat")
    s.set_defaults(fn=cmd_import_model)
