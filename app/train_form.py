"""The Train form: one widget per `RunConfig` field, validated by `trainer_core.config.run_config`, errors shown at the field.

Widget values live in session_state under `p.f.<section>.<field>` and persist across page switches, so the Data page
("train on this file") and the Runs page (clone and edit) can fill the form before the user comes back to it.
"""

from __future__ import annotations

import re

import streamlit as st

from app import form_draft
from app.i18n import CONFIG_FIELDS, LABELS, lang, option_labels, say, t
from trainer_core.common import paths
from trainer_core.config.run_config import OFFLOAD_DEVICES, PRECISIONS, SCHEDULERS, LAUNCHERS, RunConfig, config_from_dict, load_config
from trainer_core.config.sections import METHODS
from trainer_core.common.errors import UserError, each_error

QUICKSTART = paths.CONFIGS_DIR / "quickstart.yaml"
OTHER_MODEL = "__other__"
MODEL_CHOICE = "p.f.model.choice"
PRESET = "p.f.preset"

# How each field is edited: (kind, options). Floats are number inputs without bounds on purpose: the config's own
# validation refuses bad values and names the field. The learning rate is typed as text so "2e-5" works.
WIDGETS: dict[tuple[str, str], tuple] = {
    ("run", "name"): ("text",),
    ("model", "path"): ("model",),
    ("model", "trust_remote_code"): ("bool",),
    ("data", "path"): ("text",),
    ("data", "persona"): ("area",),
    ("data", "max_length"): ("int", 64),
    ("data", "eval_ratio"): ("float", 0.05, "%.2f"),
    ("data", "max_eval_records"): ("int", 50),
    ("data", "packing"): ("bool",),
    ("train", "epochs"): ("float", 1.0, "%.2f"),
    ("train", "max_steps"): ("int", 1),
    ("train", "learning_rate"): ("text",),
    ("train", "lr_scheduler"): ("select", SCHEDULERS),
    ("train", "warmup_ratio"): ("float", 0.01, "%.3f"),
    ("train", "weight_decay"): ("float", 0.01, "%.4f"),
    ("train", "micro_batch_size"): ("int", 1),
    ("train", "gradient_accumulation"): ("int", 1),
    ("train", "max_grad_norm"): ("float", 0.1, "%.2f"),
    ("train", "precision"): ("select", PRECISIONS),
    ("train", "gradient_checkpointing"): ("bool",),
    ("train", "logging_steps"): ("int", 1),
    ("train", "save_steps"): ("int", 10),
    ("train", "save_total_limit"): ("int", 1),
    ("train", "eval_steps"): ("int", 10),
    ("train", "seed"): ("int", 1),
    ("train", "method"): ("select", METHODS),
    ("lora", "rank"): ("int", 1),
    ("lora", "alpha"): ("float", 1.0, "%.1f"),
    ("lora", "dropout"): ("float", 0.01, "%.2f"),
    ("lora", "target_modules"): ("names",),
    ("lora", "use_rslora"): ("bool",),
    ("lora", "use_dora"): ("bool",),
    ("lora", "modules_to_save"): ("names",),
    ("deepspeed", "stage"): ("select", (0, 1, 2, 3)),
    ("deepspeed", "offload_optimizer"): ("select", OFFLOAD_DEVICES),
    ("deepspeed", "offload_param"): ("select", OFFLOAD_DEVICES),
    ("deepspeed", "nvme_path"): ("text",),
    ("deepspeed", "config_file"): ("text",),
    ("placement", "num_ranks"): ("int", 1),
    ("placement", "gpus"): ("gpus",),
    ("placement", "launcher"): ("select", LAUNCHERS),
    ("placement", "hostfile"): ("area",),
    ("placement", "num_nodes"): ("int", 1),
    ("placement", "node_rank"): ("int", 1),
    ("placement", "master_addr"): ("text",),
    ("placement", "master_port"): ("int", 1),
    ("eval", "persona_at_end"): ("bool",),
    ("eval", "max_records"): ("int", 50),
    ("eval", "max_new_tokens"): ("int", 32),
}
assert set(WIDGETS) == set(CONFIG_FIELDS), "every RunConfig field needs a widget in WIDGETS"


def key(section: str, name: str) -> str:
    return f"p.f.{section}.{name}"


def default_config() -> RunConfig:
    """The quickstart config (trains the starter model on the sample in minutes on a CPU), else the defaults."""
    return load_config(QUICKSTART) if QUICKSTART.is_file() else RunConfig()


def _widget_value(section: str, name: str, value):
    if (section, name) == ("train", "learning_rate"):
        return f"{value:g}"
    if (section, name) == ("placement", "gpus"):
        return list(value)
    if WIDGETS[(section, name)][0] == "names":  # typed as "q_proj, v_proj"; the config splits it again
        return ", ".join(value)
    return value


def load_into_form(cfg: RunConfig) -> None:
    """Put a config into the form (also when the Train page is not on screen: the widgets pick it up)."""
    raw = cfg.to_dict()
    for section, name in CONFIG_FIELDS:
        value = raw["name"] if section == "run" else raw[section][name]
        if (section, name) == ("model", "path"):
            _set_model(value)
        else:
            st.session_state[key(section, name)] = _widget_value(section, name, value)


def _set_model(path: str) -> None:
    p = paths.resolve(path)
    if str(p) in model_options():
        st.session_state[MODEL_CHOICE] = str(p)
    else:
        st.session_state[MODEL_CHOICE] = OTHER_MODEL
        st.session_state[key("model", "path")] = path


def ensure_defaults() -> None:
    """Fill the form the first time a tab opens the dashboard: the quickstart config, then the tab's own draft
    when its URL names one (a server restart reconnected it); keep the tab's draft after every change."""
    # A new server session: a new tab, or a tab Streamlit reconnected after a restart. The latter resends only the
    # widgets on screen, so the whole form is set again: defaults, then the tab's draft.
    if form_draft.ID not in st.session_state:
        load_into_form(default_config())
        form_draft.restore()
    if st.session_state.pop("train.clear_name", False):
        st.session_state[key("run", "name")] = ""
    form_draft.save()


def model_options() -> list[str]:
    from trainer_core.models.local import list_local_models

    return [str(p.resolve()) for p in list_local_models()] + [OTHER_MODEL]


def model_path() -> str:
    choice = st.session_state.get(MODEL_CHOICE, OTHER_MODEL)
    return st.session_state.get(key("model", "path"), "") if choice == OTHER_MODEL else choice


def value(section: str, name: str):
    """The form's current value of a field (as the widget holds it)."""
    if (section, name) == ("model", "path"):
        return model_path()
    return st.session_state.get(key(section, name))


def eval_note() -> str:
    """What evaluation will cost with the form's values, in words."""
    try:
        ratio, cap, every = (float(value("data", "eval_ratio")), int(value("data", "max_eval_records")),
                             int(value("train", "eval_steps")))
    except (TypeError, ValueError):
        return ""
    if ratio <= 0:
        return t("train.eval_off")
    when = t("train.eval_every", n=every) if every else t("train.eval_epoch")
    return t("train.eval_cost", ratio=ratio, cap=cap, when=when)


def launch_inputs() -> tuple[str, str]:
    """(the data file as the user would type it, the persona) that a launch from the form would train with."""
    persona = str(value("data", "persona") or "")
    return paths.shown(str(value("data", "path") or "")), persona if len(persona) <= 300 else persona[:300] + "…"


# The placement fields of the other nodes: a local run is this machine alone (its rendezvous port is picked free).
OTHER_NODES = {("placement", n) for n in ("hostfile", "num_nodes", "node_rank", "master_addr", "master_port")}


def applies(section: str, name: str) -> bool:
    """Whether a field means anything with the form's other choices: the page draws only these and the config
    gets only these. A field that does not apply keeps its value in the form for when its choice comes back, but
    the config takes the field's default: a value the user cannot see must neither change the run nor block it
    with an error under a field that is not on the page (a hidden num_nodes of 2 refused every local launch)."""
    if section == "lora":
        return value("train", "method") != "full"
    if (section, name) == ("deepspeed", "nvme_path"):
        return "nvme" in (value("deepspeed", "offload_optimizer"), value("deepspeed", "offload_param"))
    if (section, name) in OTHER_NODES:
        return value("placement", "launcher") != "local"
    return True


def form_dict() -> dict:
    raw: dict = {"name": value("run", "name") or ""}
    for section, name in CONFIG_FIELDS:
        if section != "run":
            fields = raw.setdefault(section, {})
            if applies(section, name):
                fields[name] = value(section, name)
    return raw


def validate() -> tuple[RunConfig | None, list[UserError]]:
    """(config, []) when the form is valid, else (None, every problem: one per invalid field, found in one pass)."""
    try:
        return config_from_dict(form_dict()), []
    except UserError as e:
        return None, each_error(e)


_FIELD_RE = re.compile(r"^(name|[a-z_]+\.[a-z_]+)\b")


def error_field(error: UserError) -> str | None:
    """The dotted field a problem is about: its `name` parameter (`train.learning_rate`; `name` is `run.name`),
    else the field its English sentence starts with (`data.path ...`)."""
    named = error.text.params.get("name")
    m = _FIELD_RE.match(named if isinstance(named, str) else str(error))
    if not m:
        return None
    return "run.name" if m.group(1) == "name" else m.group(1)


def errors_text(errors: list[UserError]) -> str:
    """Every problem in the tab's language, one per line (markdown list when there are several)."""
    if len(errors) == 1:
        return say(errors[0])
    return "\n" + "\n".join(f"- {say(e)}" for e in errors)


def field(section: str, name: str, errors: list[UserError] = (), **kw) -> None:
    """Draw the widget for one config field, with the field's docstring as help and its problems right below."""
    kind, *opts = WIDGETS[(section, name)]
    label, help_ = t(f"field.{section}.{name}"), t(f"help.{section}.{name}")
    k = key(section, name)
    if kind == "model":
        _model_picker(label, help_)
    elif kind in ("text", "names"):
        st.text_input(label, key=k, help=help_, persist_state="session", **kw)
    elif kind == "area":
        st.text_area(label, key=k, help=help_, height=90, persist_state="session", **kw)
    elif kind == "bool":
        st.checkbox(label, key=k, help=help_, persist_state="session", **kw)
    elif kind == "int":
        st.number_input(label, key=k, help=help_, step=opts[0], persist_state="session", **kw)
    elif kind == "float":
        st.number_input(label, key=k, help=help_, step=opts[0], format=opts[1], persist_state="session", **kw)
    elif kind == "select":
        fmt = option_labels(f"opt.{name}.") if name in ("stage", "offload_optimizer", "offload_param") else str
        st.selectbox(label, list(opts[0]), key=k, help=help_, format_func=fmt, persist_state="session", **kw)
    elif kind == "gpus":
        _gpu_picker(label, help_, k)
    for error in errors:
        if error_field(error) == f"{section}.{name}":
            st.error(say(error), icon=":material/error:")


def _model_picker(label: str, help_: str) -> None:
    options = model_options()
    if st.session_state.get(MODEL_CHOICE) not in options:
        st.session_state[MODEL_CHOICE] = OTHER_MODEL
    st.selectbox(label, options, key=MODEL_CHOICE, help=help_, persist_state="session",
                 format_func=lambda p, other=t("train.model_other"): other if p == OTHER_MODEL else paths.shown(p))
    if st.session_state[MODEL_CHOICE] == OTHER_MODEL:
        st.text_input(t("train.model_typed"), key=key("model", "path"), persist_state="session",
                      placeholder="/data/models/Qwen2.5-7B-Instruct")


@st.cache_resource(show_spinner=False)
def hardware():
    from trainer_core.config.hardware import detect

    return detect()


def _gpu_picker(label: str, help_: str, k: str) -> None:
    gpus = {g.index: g for g in hardware().gpus}
    chosen = st.session_state.get(k) or []
    options = sorted(set(gpus) | set(chosen))

    def fmt(i: int) -> str:
        g = gpus.get(i)
        if g is None:
            return f"GPU {i}"
        # Counted within CUDA_VISIBLE_DEVICES; where that renumbers, also the id nvidia-smi and the locks use.
        machine = f" ({t('train.gpu_machine', id=g.lock_id)})" if g.lock_id not in (i, None) else ""
        return f"GPU {i}{machine} · {g.name} · {g.total_bytes / 1024**3:.0f} GiB"

    st.multiselect(label, options, key=k, help=help_, format_func=fmt, persist_state="session",
                   placeholder=t("train.gpus_all") if gpus else t("train.no_gpu"), disabled=not options)


CUSTOM_PRESET = "custom"


def _preset_zero(name: str) -> tuple[int, str, str]:
    """A shipped preset's ZeRO stage and offload devices, as the form's fields hold them."""
    from trainer_core.config.ds_config import load_preset, zero_layout

    zero = zero_layout(load_preset(name))
    return zero.stage, zero.offload_optimizer, zero.offload_param


def preset_options() -> list[str]:
    from trainer_core.config.ds_config import list_presets

    return [*list_presets(), CUSTOM_PRESET]


def preset_labels():
    """format_func of the preset box, the language bound now (Streamlit may call it outside the script run)."""
    custom = t("train.preset_custom")
    return lambda name: custom if name == CUSTOM_PRESET else name


def matching_preset() -> str:
    """The shipped preset whose ZeRO stage and offloads the form holds, else "custom" (also when a hand-written
    DeepSpeed file is in use)."""
    from trainer_core.config.ds_config import list_presets

    if value("deepspeed", "config_file"):
        return CUSTOM_PRESET
    try:
        form_zero = (int(value("deepspeed", "stage") or 0), value("deepspeed", "offload_optimizer") or "none",
                     value("deepspeed", "offload_param") or "none")
    except (TypeError, ValueError):
        return CUSTOM_PRESET
    for name in list_presets():
        if _preset_zero(name) == form_zero:
            return name
    return CUSTOM_PRESET


def sync_preset() -> None:
    """Make the preset box show what the form holds; call before the box is drawn."""
    st.session_state[PRESET] = matching_preset()


def apply_preset() -> None:
    """Callback of the preset box and button: copy a shipped DeepSpeed preset's ZeRO choices into the form."""
    if st.session_state.get(PRESET, CUSTOM_PRESET) == CUSTOM_PRESET:
        return  # "custom" is what the form already holds
    stage, offload_optimizer, offload_param = _preset_zero(st.session_state[PRESET])
    st.session_state[key("deepspeed", "stage")] = stage
    st.session_state[key("deepspeed", "offload_optimizer")] = offload_optimizer
    st.session_state[key("deepspeed", "offload_param")] = offload_param
    st.session_state[key("deepspeed", "config_file")] = ""


def reset_to_quickstart() -> None:
    load_into_form(default_config())


def memory_plan(plan):
    """The plan's memory figures; a UserError saying why when the model's config could not be read."""
    if plan.memory_problem is not None:
        raise UserError(plan.memory_problem)
    return plan.memory


def launch_commands(plan) -> list[str]:
    """The exact launcher command line(s) of a plan, as a shell would take them."""
    from trainer_core.runs.launch import shell_line

    return [shell_line(argv) for argv in plan.argv]


def plan_rows(plan) -> list[tuple[str, int, int, bool]]:
    """(label, needed bytes, available bytes, fits) for the memory plan: per rank, then the host."""
    if plan.on_gpu:
        return [(t("plan.per_rank_gpu"), plan.per_rank_device_bytes, plan.device_total_bytes,
                 plan.per_rank_device_bytes <= 0.95 * plan.device_total_bytes),
                (t("plan.host"), plan.host_bytes, plan.host_total_bytes, plan.host_bytes <= plan.host_total_bytes)]
    return [(t("plan.per_rank_cpu"), plan.per_rank_device_bytes, plan.host_total_bytes, plan.fits),
            (t("plan.host"), plan.host_bytes, plan.host_total_bytes, plan.fits)]


def breakdown_text(plan) -> str:
    """`model states 56 MiB · activations 4.6 MiB · ...`; parts without a label keep the planner's own name."""
    from trainer_core.config.memory import fmt_bytes

    labels = LABELS[lang()]
    return " · ".join(f"{labels.get(f'plan.part.{k}', k)} {fmt_bytes(v)}" for k, v in plan.breakdown.items())
