"""Chat: talk to a finished run (its final model or a checkpoint) or any model; compare it with its base model or
another checkpoint; stop a reply; download the conversation."""

from pathlib import Path

import streamlit as st

from app import chat_view as cv
from app import train_form as form
from app.data_view import resolve, shown_path
from app.frame import require_frame
from app.i18n import option_labels, say, t
from app.tab_state import active_run

require_frame()
cv.end_stale_reply()
st.title(t("chat.title"))

runs = {r.name: r for r in cv.chat_runs()}
if (opened := st.session_state.pop("chat.open", None)) in runs:  # "Chat with it" on the Monitor: that run's final
    st.session_state.update({"p.chat.source": "run", "p.chat.run": opened,
                             "p.chat.target": cv.FINAL_LABEL if cv.FINAL_LABEL in cv.chat_models(runs[opened])
                             else None})
source = st.radio(t("chat.source"), ["run", "model"], key="p.chat.source", horizontal=True, persist_state="session",
                  format_func=option_labels("chat.source."))
base_dir, base_trust, targets = None, False, {}
if source == "run":
    if not runs:
        st.info(t("chat.no_runs"))
        st.stop()
    active = active_run()
    if st.session_state.get("p.chat.run") not in runs:
        st.session_state["p.chat.run"] = active.name if active is not None and active.name in runs else next(iter(runs))
    c1, c2 = st.columns(2)
    run = runs[c1.selectbox(t("chat.run"), list(runs), key="p.chat.run", persist_state="session")]
    targets = cv.chat_models(run)
    if st.session_state.get("p.chat.target") not in targets:
        st.session_state["p.chat.target"] = next(iter(targets))
    target = c2.selectbox(t("chat.target"), list(targets), key="p.chat.target", persist_state="session",
                          format_func=cv.target_label)
    model_dir = targets[target]
    ft_by, name, checkpoint = ["ft", f"{run.name} · {target}"], run.name, target
    base_path, base_trust = cv.run_base(run)
    base_dir = resolve(base_path)
    trust = base_trust
else:
    options = [str(p) for p in cv.list_local_models()] + [form.OTHER_MODEL]
    if st.session_state.get("p.chat.model") not in options:
        st.session_state["p.chat.model"] = options[0]
    c1, c2 = st.columns(2)
    choice = c1.selectbox(t("chat.model"), options, key="p.chat.model", persist_state="session",
                          format_func=lambda p, other=t("train.model_other"): other if p == form.OTHER_MODEL else shown_path(p))
    if choice == form.OTHER_MODEL:
        typed = c2.text_input(t("train.model_typed"), key="p.chat.model_typed", persist_state="session")
        if not typed.strip():
            st.stop()
        model_dir = resolve(typed)
    else:
        model_dir = Path(choice)
    ft_by, name, checkpoint = ["model", shown_path(model_dir)], str(model_dir), ""
    trust = st.checkbox(t("field.model.trust_remote_code"), key="p.chat.trust", persist_state="session",
                        help=t("help.model.trust_remote_code"))
    if trust:
        st.warning(t("train.trust_warning"), icon=":material/warning:")

# A new model brings its own persona (the one it was trained with).
if st.session_state.get("chat.persona_for") != str(model_dir):
    st.session_state["chat.persona_for"] = str(model_dir)
    st.session_state["p.chat.persona"] = cv.persona_for(model_dir)
persona = st.text_area(t("chat.persona"), key="p.chat.persona", height=68, persist_state="session",
                       help=t("help.data.persona"))
st.caption(t(cv.persona_note(model_dir, persona)))
if found := cv.special_tokens_in(model_dir, trust, persona):
    st.warning(t("chat.special_persona", tokens=", ".join(found)), icon=":material/warning:")

params = cv.params_form()

c1, c2 = st.columns(2)
compare = c1.toggle(t("chat.compare"), key="p.chat.compare", persist_state="session", disabled=base_dir is None,
                    help=t("chat.compare_help")) and base_dir is not None
sides = {"ft": (model_dir, trust, ft_by)}
if compare:
    choices = cv.compare_choices(targets, checkpoint)
    if st.session_state.get("p.chat.other") not in choices:
        st.session_state["p.chat.other"] = "base"
    other = c2.selectbox(t("chat.compare_with"), choices, key="p.chat.other", persist_state="session",
                         format_func=lambda k, b=shown_path(base_dir): cv.compare_label(k, b))
    if other == "base":
        sides["base"] = (base_dir, base_trust, ["base", shown_path(base_dir)])
    else:  # another checkpoint of the same run: its column says which
        sides[other] = (targets[other], trust, ["ft", f"{name} · {other}"])
device = cv.device_or_stop()
cv.keep_only(sides, device.device)
st.caption(t("chat.device", device=say(device.describe())))
conv = cv.conversation(cv.conversation_key(source, name, checkpoint, persona))
for side in sides:
    conv.setdefault(side, [])

prompt = st.chat_input(t("chat.placeholder"), key="chat.input")
if prompt:
    if found := cv.special_tokens_in(model_dir, trust, prompt):
        st.warning(t("chat.special_prompt", tokens=", ".join(found)), icon=":material/warning:")
    cv.add_prompt(conv, sides, prompt)
# Replies are asked for only for a prompt sent (or a regenerate clicked) in this run, never because a page left
# mid-reply is shown again: what a model said stays what it said.
ask = bool(prompt) or st.session_state.pop("chat.regenerate_now", False)

cols = cv.show_conversation(conv, sides)
for side, (path, trust_code, by) in sides.items():
    hist = conv[side]
    if ask and hist and hist[-1]["role"] == "user":
        with cols[side]:
            cv.answer(hist, side, path, trust_code, by, persona, params, device.device)

# Drawn after the replies so that "regenerate" knows whether there is anything to regenerate.
buttons = st.container(horizontal=True)  # one row of buttons, each as wide as its label
buttons.button(t("chat.clear"), key="chat.clear", on_click=cv.clear, icon=":material/delete_sweep:")
buttons.button(t("chat.regenerate"), key="chat.regenerate", on_click=cv.regenerate, args=(list(sides),),
               icon=":material/refresh:",
               disabled=not conv["ft"])
run_probe = buttons.button(t("chat.probe"), key="chat.probe_btn", icon=":material/psychology:",
                           help=t("chat.probe_help", prompts=" / ".join(cv.PROBES)))
cv.export_buttons(buttons, conv, cv.transcript_info(source, name, checkpoint, persona, params, sides))

# ---- persona probe: the same four prompts, one turn each, on every side; the results belong to this conversation
if run_probe:
    cv.run_probe(conv, sides, persona, params, device.device, run=run if source == "run" else None,
                 models={side: checkpoint if side == "ft" else side for side in sides})
else:
    cv.show_probe(conv)
