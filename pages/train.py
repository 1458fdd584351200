"""Train: the run config as a form, the memory plan for this machine, the exact DeepSpeed JSON and command, Launch."""

import json

import streamlit as st

from app import downloads, form_draft, method_fit, train_checks
from app import train_form as form
from app.frame import require_frame
from app.i18n import say, t
from app.qwen1_import_view import offer_qwen1_import
from app.run_actions import UserError, device_busy, each_error, fmt_bytes, launch
from app.tab_state import set_active_run

require_frame()
st.title(t("train.title"))
st.caption(t("app.steps"))
draft = form_draft.notice()
first_run = form_draft.first_run()
if draft is not None and draft[0] == "lost":  # said before anything can be launched from the reset form
    st.warning(t("train.draft_lost", reason=t(draft[1])), icon=":material/restore_page:")
elif draft is not None:
    st.info(t("train.draft_restored"), icon=":material/restore_page:")

# Validate what the widgets hold before drawing them, so each error can sit under its own field. The slow checks
# (the data through the tokenizer) start now in the background and are waited for below the form.
cfg, errors = form.validate()
pf = None
checks = train_checks.start(cfg) if cfg is not None else None
if checks is not None and checks.done:  # known already: a problem goes under its field
    try:
        pf = checks.result(0)
    except UserError as e:
        errors = each_error(e)
error = form.errors_text(errors) if errors else None
# Asked on every draw, not kept with the plan: a run may take or free the devices while the plan still holds.
busy = device_busy(cfg, form.hardware()) if cfg is not None else None


def f(section: str, name: str, **kw) -> None:
    """One form field, with each problem that names this field under it."""
    form.field(section, name, errors, **kw)



st.button(t("train.reset"), key="train.reset", on_click=form.reset_to_quickstart, icon=":material/restart_alt:")
downloads.config_uploader()
tabs = st.tabs([t("train.tab.model"), t("train.tab.hyper"), t("train.tab.zero"), t("train.tab.placement")])
with tabs[0]:
    c1, c2 = st.columns(2)
    with c1:
        f("run", "name", placeholder=t("train.name_placeholder"))
        f("model", "path")
        if not offer_qwen1_import(form.value("model", "path")):  # a Qwen-1 folder is imported, not trusted
            f("model", "trust_remote_code")
            if form.value("model", "trust_remote_code"):
                st.warning(t("train.trust_warning"), icon=":material/warning:")
    with c2:
        f("data", "path")
        st.page_link("pages/data.py", label=t("train.check_data"), icon=":material/dataset:")
        f("data", "persona")
        if not str(form.value("data", "persona") or "").strip():
            st.warning(t("train.persona_empty"), icon=":material/warning:")
    c1, c2, c3 = st.columns(3)
    with c1:
        f("data", "max_length")
    with c2:
        f("data", "eval_ratio")
        f("data", "max_eval_records")
        st.caption(form.eval_note())
    with c3:
        f("data", "packing")
        f("eval", "persona_at_end")
        f("eval", "max_records")
        f("eval", "max_new_tokens")
with tabs[1]:
    f("train", "method")
    if form.applies("lora", "rank"):  # the adapters' own fields, only where they apply
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            f("lora", "rank")
            f("lora", "alpha")
        with c2:
            f("lora", "dropout")
            f("lora", "use_rslora")
            f("lora", "use_dora")
        with c3:
            f("lora", "target_modules", placeholder=t("train.lora_targets_auto"))
        with c4:
            f("lora", "modules_to_save")
    c1, c2, c3 = st.columns(3)
    with c1:
        f("train", "epochs")
        f("train", "max_steps")
        f("train", "learning_rate")
        f("train", "lr_scheduler")
        f("train", "warmup_ratio")
    with c2:
        f("train", "micro_batch_size")
        f("train", "weight_decay")
        f("train", "gradient_checkpointing")
        f("train", "seed")
    with c3:
        f("train", "logging_steps")
        f("train", "save_steps")
        f("train", "save_total_limit")
        f("train", "eval_steps")
with tabs[2]:
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    form.sync_preset()
    c1.selectbox(t("train.preset"), form.preset_options(), key=form.PRESET, persist_state="session",
                 help=t("train.preset_help"), format_func=form.preset_labels(), on_change=form.apply_preset)
    c2.button(t("train.apply_preset"), key="train.apply_preset", on_click=form.apply_preset)
    c1, c2, c3 = st.columns(3)
    with c1:
        f("deepspeed", "stage")
        f("deepspeed", "offload_optimizer")
        f("deepspeed", "offload_param")
        if form.applies("deepspeed", "nvme_path"):
            f("deepspeed", "nvme_path")
    with c2:
        f("train", "precision")
        f("train", "gradient_accumulation")
        f("train", "max_grad_norm")
    with c3:
        f("deepspeed", "config_file", placeholder="configs/deepspeed/zero3.json")
with tabs[3]:
    c1, c2 = st.columns(2)
    with c1:
        f("placement", "num_ranks")
        f("placement", "gpus")
        f("placement", "launcher")
    if form.applies("placement", "hostfile"):
        with c2:
            f("placement", "hostfile")
            f("placement", "num_nodes")
            f("placement", "node_rank")
            f("placement", "master_addr")
            f("placement", "master_port")

st.divider()
st.subheader(t("train.plan"))
if error:
    st.error(t("train.invalid", error=error), icon=":material/error:")
elif pf is None and (pf := train_checks.result_or_rerun(checks)) is None:
    st.fragment(run_every=train_checks.POLL_S)(train_checks.placeholder)(checks)
else:
    try:
        plan = form.memory_plan(pf)
    except UserError as e:
        plan = None
        st.error(say(e), icon=":material/error:")
    if plan is not None:
        with st.container(border=True, key="train-memory"):
            rows = form.plan_rows(plan)
            c = st.columns(len(rows) + 1)
            for col, (label, need, have, ok) in zip(c, rows):
                colour = "green" if ok else "red"
                col.markdown(f"{label}  \n:{colour}[**{fmt_bytes(need)}**] / {fmt_bytes(have)}")
            c[-1].markdown(f"{t('plan.params')}  \n**{plan.params:,}**")
            if plan.fits:
                st.success(t("plan.fits"), icon=":material/check_circle:")
            else:
                st.error(t("plan.not_fit"), icon=":material/memory:")
            st.caption(form.breakdown_text(plan))
            for note in plan.notes:
                st.caption(say(note))
        method_fit.show(pf)
    if busy is not None:
        st.error(say(busy), icon=":material/block:")
    for lint in pf.lints:
        st.warning(say(lint.message), icon=":material/rule:")
    with st.expander(t("train.command"), expanded=True):
        for line in form.launch_commands(pf):
            st.code(line, language="bash", wrap_lines=True)
        st.caption(t("train.command_note"))
    # The closed sections are drawn only once opened (on_change="rerun" makes `.open` known): on a fresh tab their
    # scripts, JSON, YAML and download buttons were most of what the page sent, for text few users open.
    cluster = st.expander(t("train.cluster"), key="train.cluster_open", on_change="rerun")
    if cluster.open:
        with cluster:
            files = pf.cluster_files
            if "hostfile" in files:
                st.caption(t("train.hostfile"))
                st.code(files["hostfile"], language="text")
            for name, label in (("launch_node.sh", "train.download_node"),
                                ("launch_slurm.sbatch", "train.download_slurm")):
                st.code(files[name], language="bash")
                st.download_button(t(label), files[name], file_name=name, mime="text/x-shellscript",
                                   key=f"dl-{name}")
            st.caption(t("train.cluster_note"))
    ds_json = st.expander("ds_config.json", key="train.ds_json_open", on_change="rerun")
    if ds_json.open:
        ds_json.code(json.dumps(pf.ds_config, indent=2), language="json")
    yaml = st.expander("config.yaml", key="train.yaml_open", on_change="rerun")
    if yaml.open:
        yaml.code(pf.cfg.to_yaml(), language="yaml")

# What the click trains, beside the button: after a restart or a page switch the user sees the file and persona.
data_shown, persona = form.launch_inputs()
st.markdown(t("train.uses", data=data_shown, persona=persona if persona.strip() else t("train.uses_no_persona")))
if draft is not None and draft[0] == "lost":
    st.caption(t("train.draft_lost", reason=t(draft[1])))
launch_row = st.container(horizontal=True, vertical_alignment="center")
# The click is kept by a callback: a device taken between the draw and the click disables the button in this very
# run, and a disabled button reads as not clicked; the page must still say why nothing started.
clicked = launch_row.button(t("train.launch"), key="train.launch", type="primary", icon=":material/rocket_launch:",
                            disabled=bool(error) or busy is not None,
                            on_click=lambda: st.session_state.update({"train.clicked": True}))
clicked = st.session_state.pop("train.clicked", False) or clicked
if error:
    launch_row.caption(t("train.launch_blocked", error=error))
elif busy is not None:
    launch_row.caption(t("train.launch_busy", reason=say(busy)))
if clicked and first_run:  # clicked before a restart: the form may have changed under it
    st.warning(t("train.check_before_launch"), icon=":material/restore_page:")
elif clicked and busy is not None:  # taken between the draw and the click
    st.error(t("train.refused", error=say(busy)), icon=":material/block:")
elif clicked and not error:
    try:
        with st.spinner(t("train.launching")):
            run = launch(cfg, checked=pf)  # the plan shown above, planned again only if it no longer holds
    except UserError as e:
        st.error(t("train.refused", error=say(e)), icon=":material/block:")
    else:
        set_active_run(run)
        form_draft.clear_notice()
        st.session_state["train.clear_name"] = True
        st.switch_page("pages/monitor.py")
