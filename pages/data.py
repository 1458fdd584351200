"""Data: pick a dataset, see what is wrong with it row by row, and what the model will actually be trained on."""

from pathlib import Path

import streamlit as st

from app import data_view as dv
from app import train_form as form
from app.frame import require_frame
from app.i18n import option_labels, say, t
from app.run_actions import UserError

require_frame()
st.title(t("data.title"))
st.caption(t("app.steps"))

source = st.radio(t("data.source"), ["sample", "upload", "path"], key="p.data.source", horizontal=True,
                  format_func=option_labels("data.source."), persist_state="session")
path: Path | None = None
if source == "sample":
    path = dv.SAMPLE_DATA
    st.caption(t("data.sample_note"))
elif source == "upload":
    # No `type=`: with it Streamlit itself raises on a file name holding a NUL byte before this script runs, on
    # every rerun until a reload. Our own check names the problem instead (extension and name, in store_upload).
    dv.take_upload(st.file_uploader(t("data.upload"), key="data.upload", help=t("data.upload_help")))
    if st.session_state.get("data.upload_error"):
        st.error(say(st.session_state["data.upload_error"]), icon=":material/error:")
        st.stop()
    if st.session_state.get("data.last_upload"):
        path = Path(st.session_state["data.last_upload"])
        st.caption(t("data.stored_as", path=dv.shown_path(path)))
else:
    typed = st.text_input(t("data.server_path"), key="p.data.server_path", persist_state="session",
                          placeholder="data/my_dataset.jsonl")
    path = dv.resolve(typed) if typed.strip() else None

if path is None:
    st.info(t("data.pick_one"))
    st.stop()
try:
    report = dv.result_of(dv.report_job(path), t("data.validating"))
except UserError as e:
    st.error(say(e), icon=":material/error:")
    st.stop()

in_form = dv.resolve(str(form.value("data", "path") or "")) == path.resolve()
c1, c2 = st.columns([3, 2], vertical_alignment="center")
c1.markdown(f"**{t('data.file')}** `{dv.shown_path(path)}`")
if in_form:
    c2.success(t("data.in_form"), icon=":material/check:")
elif c2.button(t("data.use"), key="data.use", type="primary", disabled=report.n_usable == 0,
               icon=":material/arrow_forward:"):
    dv.use_in_form(path)
    st.switch_page("pages/train.py")

# ---- validation summary
m = st.columns(5)
m[0].metric(t("data.rows"), report.n_rows)
m[1].metric(t("data.usable"), report.n_usable)
m[2].metric(t("data.errors"), report.n_bad_rows)
m[3].metric(t("data.warnings"), report.n_warnings)
m[4].metric(t("data.format"), report.format)
problem_columns = {"row": st.column_config.NumberColumn(t("data.col.row"), width="small"),
                   "field": t("data.col.field"), "message": t("data.col.message")}
if report.errors:
    st.error(t("data.errors_note", n=report.n_bad_rows, problems=report.n_errors), icon=":material/error:")
    st.dataframe(dv.errors_frame(report), hide_index=True, height=min(400, 38 + 35 * len(report.errors)),
                 key="data.errors_table", column_config=problem_columns)
if report.warnings:
    with st.expander(t("data.warnings_list", n=report.n_warnings)):
        st.dataframe(dv.errors_frame(report, "warnings"), hide_index=True, key="data.warnings_table",
                     column_config=problem_columns)
if report.n_usable == 0:
    st.stop()

# ---- a smaller or de-duplicated copy, as a new file
dv.subset_panel(path, report)

# ---- preview
st.subheader(t("data.preview"))
pages_total = dv.n_pages(report)
if st.session_state.get("p.data.page", 1) > pages_total:
    st.session_state["p.data.page"] = 1
page_no = st.number_input(t("data.page", n=pages_total), min_value=1, max_value=pages_total, key="p.data.page",
                          persist_state="session")
st.dataframe(dv.preview_frame(report, int(page_no)), hide_index=True, key="data.preview_table",
             column_config={"row": st.column_config.NumberColumn(t("data.col.row"), width="small"),
                            "turns": st.column_config.NumberColumn(t("data.col.turns"), width="small"),
                            "system": t("data.col.system"), "user": t("data.col.user"),
                            "assistant": t("data.col.assistant")})

# ---- tokens, with the tokenizer, persona and max_length the Train form holds
st.subheader(t("data.tokens"))
model_dir = form.model_path()
trust = bool(form.value("model", "trust_remote_code"))
persona = form.value("data", "persona") or ""
st.caption(t("data.tokens_note", model=dv.shown_path(model_dir)))
form.field("data", "max_length")
max_length = int(form.value("data", "max_length") or 0)
if max_length < 16:
    st.error(t("data.bad_max_length"))
    st.stop()
try:
    stats = dv.result_of(dv.stats_job(path, report, model_dir, trust, persona, max_length), t("data.tokenizing"))
    tok = dv.tokenizer_for(model_dir, trust)
except UserError as e:
    st.error(say(e), icon=":material/error:")
    st.stop()
m = st.columns(5)
m[0].metric("p50", stats.p50)
m[1].metric("p95", stats.p95)
m[2].metric(t("data.max"), stats.max)
m[3].metric(t("data.truncated", max_length=max_length), stats.n_truncated)
m[4].metric(t("data.answer_lost"), stats.n_answer_lost)
st.altair_chart(dv.length_histogram(stats, {"x": t("data.hist_x"), "y": t("data.hist_y")}), width="stretch")
if stats.n_answer_lost:  # training skips these: the banner must count them (they are truncated records too)
    st.warning(t("data.answer_lost_note", n=stats.n_truncated, lost=stats.n_answer_lost, max_length=max_length),
               icon=":material/content_cut:")
elif stats.n_truncated:
    st.warning(t("data.truncated_note", n=stats.n_truncated, max_length=max_length), icon=":material/content_cut:")
specials = dv.special_frame(report, tok)
if len(specials):
    st.warning(t("data.special_rows", n=len(specials)), icon=":material/warning:")
    st.dataframe(specials, hide_index=True, key="data.special_table", column_config=problem_columns)

# ---- label mask
st.subheader(t("data.mask"))
st.caption(t("data.mask_note"))
st.caption(t("data.end_of_turn", marker=dv.end_of_turn(tok)))
if st.session_state.get("p.data.record", 1) > report.n_usable:
    st.session_state["p.data.record"] = 1
record = st.number_input(t("data.record", n=report.n_usable), min_value=1, max_value=report.n_usable,
                         key="p.data.record", persist_state="session")
pieces, enc = dv.record_mask(tok, report.conversations[int(record) - 1], persona, max_length)
st.caption(t("data.mask_stats", row=report.row_ids[int(record) - 1], n=len(enc.input_ids), trained=enc.n_label_tokens))
if enc.truncated:
    st.warning(t("data.record_truncated", max_length=max_length))
st.html(dv.mask_html(pieces))
