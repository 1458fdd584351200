"""Data page logic: pick a dataset, validate it, measure it with the real tokenizer, show one record's label mask."""

from __future__ import annotations

import html
import re
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from app import data_jobs
from app import train_form as form
from app.i18n import option_labels, say, t
from trainer_core.common import paths
from trainer_core.data.dataset import (DataReport, check_data_path, load_dataset, load_dataset_bytes,
                                       modified_time, special_token_warnings)
from trainer_core.data.token_stats import TokenStats, token_stats
from trainer_core.data.subset import write_subset
from trainer_core.data.uploads import safe_upload_name, store_upload
from trainer_core.common.errors import UserError

PAGE_SIZE = 20


def store_uploaded(data: bytes, name: str) -> Path:
    """Validate an uploaded file, then keep it under data/uploads with a safe name. UserError if unreadable."""
    safe_upload_name(name)  # a name it cannot take (a NUL byte) is refused before the bytes are read
    load_dataset_bytes(data, name)  # file-level problems (encoding, not JSON, wrong type) stop here
    return store_upload(data, name)


def take_upload(upload) -> None:
    """Store a newly uploaded file and select it (on this page and in the Train form); a file that cannot be used
    replaces the selection with its error, so nothing of the previous file stays on screen. Runs once per upload."""
    if upload is None:  # the file was taken out of the uploader: its error goes with it
        st.session_state.pop("data.upload_error", None)
        st.session_state.pop("data.upload_id", None)
        return
    if upload.file_id == st.session_state.get("data.upload_id"):
        return
    st.session_state["data.upload_id"] = upload.file_id
    try:
        stored = store_uploaded(upload.getvalue(), upload.name)
    except UserError as e:
        st.session_state["data.last_upload"], st.session_state["data.upload_error"] = None, e
        return
    st.session_state["data.last_upload"], st.session_state["data.upload_error"] = str(stored), None
    use_in_form(stored)


def use_in_form(path: Path) -> None:
    """Make ``path`` the Train form's dataset."""
    st.session_state[form.key("data", "path")] = shown_path(path)


def resolve(path: str) -> Path:
    """A dataset path as typed: relative paths are relative to the project folder, as in run configs."""
    return paths.resolve(path)


def shown_path(path: Path | str) -> str:
    """Paths inside the project are shown relative to it, as a user would type them."""
    return paths.shown(path)


SAMPLE_DATA = paths.SAMPLE_DATA
"""The dataset the Data page offers first."""
FIRST_WAIT_S = 1.5
"""How long a page waits for data work before it shows a progress bar instead (huanhuan.json takes well under)."""
PROGRESS_REFRESH_S = 0.5


def report_job(path: Path) -> data_jobs.Job:
    """Validation of a dataset file, in the background (shared until the file changes). UserError if missing."""
    check_data_path(path)  # the one check of a dataset path; a FIFO or /dev/zero would hang the job
    key = ("report", str(path), modified_time(path))
    return data_jobs.submit(key, lambda progress: load_dataset(path, progress=progress))


@st.cache_resource(show_spinner=False, max_entries=2)
def tokenizer_for(model_dir: str, trust_remote_code: bool):
    from trainer_core.models.local import check_model_dir, load_tokenizer

    check_model_dir(model_dir, trust_remote_code=trust_remote_code)
    return load_tokenizer(model_dir, trust_remote_code=trust_remote_code)


def stats_job(path: Path, report: DataReport, model_dir: str, trust: bool, persona: str,
              max_length: int) -> data_jobs.Job:
    """Token statistics of a validated file, in the background. The tokenizer is loaded here, on the page's
    thread, where Streamlit's resource cache lives."""
    tok = tokenizer_for(model_dir, trust)
    key = ("stats", str(path), modified_time(path), model_dir, trust, persona, max_length)
    total = max(1, report.n_usable)
    return data_jobs.submit(key, lambda progress: token_stats(report, tok, persona=persona, max_length=max_length,
                                                              progress=lambda n: progress(n / total)))


def result_of(job: data_jobs.Job, text: str):
    """The job's result (raising what it raised). Work still running after FIRST_WAIT_S shows a progress bar that
    refreshes itself, and the page stops here: the script ends, the session stays responsive, and the bar reruns
    the page once the result is there."""
    job.finished.wait(FIRST_WAIT_S)
    if not job.done:
        @st.fragment(run_every=PROGRESS_REFRESH_S)
        def progress_bar() -> None:
            if job.done:
                st.rerun()
            st.progress(job.fraction, text=f"{text} {job.fraction:.0%}")

        progress_bar()
        st.stop()
    if job.error is not None:
        raise job.error
    return job.result


def field_label(field: str) -> str:
    """A record field as the table shows it: validation names a turn of a converted (alpaca) record "turn N",
    which is shown in the tab's language; real field names (`messages[0]`, `output`) stay as they are."""
    m = re.fullmatch(r"turn (\d+)", field)
    return t("data.field.turn", n=m.group(1)) if m else field


def errors_frame(report: DataReport, which: str = "errors") -> pd.DataFrame:
    """Row problems as a table, each message in the tab's language."""
    rows = [{"row": e.row, "field": field_label(e.field), "message": say(e.message)} for e in getattr(report, which)]
    return pd.DataFrame(rows, columns=["row", "field", "message"])


def special_frame(report: DataReport, tokenizer) -> pd.DataFrame:
    """Per-row warnings for texts holding the tokenizer's special-token strings (they need the tokenizer, so they are
    not part of the report itself)."""
    rows = [{"row": w.row, "field": field_label(w.field), "message": say(w.message)}
            for w in special_token_warnings(report, tokenizer)]
    return pd.DataFrame(rows, columns=["row", "field", "message"])


def end_of_turn(tokenizer) -> str:
    """The end-of-turn marker the label mask trains after each answer, as the chat template writes it."""
    from trainer_core.data.chat_template import turn_format

    return turn_format(tokenizer).end_marker


def preview_frame(report: DataReport, page: int, page_size: int = PAGE_SIZE) -> pd.DataFrame:
    """One page of usable records: row number, turns, the last user message and the answer (text, never HTML)."""
    start = (page - 1) * page_size
    rows = []
    for row, conv in zip(report.row_ids[start:start + page_size], report.conversations[start:start + page_size]):
        system = next((m["content"] for m in conv if m["role"] == "system"), "")
        user = next(m["content"] for m in reversed(conv) if m["role"] == "user")
        rows.append({"row": row, "turns": len(conv), "system": system, "user": user, "assistant": conv[-1]["content"]})
    return pd.DataFrame(rows, columns=["row", "turns", "system", "user", "assistant"])


def n_pages(report: DataReport, page_size: int = PAGE_SIZE) -> int:
    return max(1, -(-report.n_usable // page_size))


def length_histogram(stats: TokenStats, labels: dict[str, str]) -> alt.LayerChart:
    """Token lengths as a histogram with a red rule at max_length; the part of each bar past the rule (records that
    get truncated) in red. Bins are whole tokens over the whole axis, so a handful of records still shows bars."""
    bins, top = histogram_bins(stats.lengths, stats.max_length)
    # Each bar spans its own bottom and top (the truncated part of a bin sits on its kept part): with x2 given, a
    # stacked y alone drew every bar as a thin floating dash at its height.
    kept = bins[~bins["cut"]].set_index("start")["count"]
    bins = bins.assign(bottom=[kept.get(a, 0) if c else 0 for a, c in zip(bins["start"], bins["cut"])])
    bins = bins.assign(top=bins["bottom"] + bins["count"])
    whole = alt.Axis(format="d", tickMinStep=1)  # no "0.2 records", no repeated "302" labels
    bars = alt.Chart(bins).mark_bar().encode(
        x=alt.X("start:Q", title=labels["x"], axis=whole, scale=alt.Scale(domain=[0, top])),
        x2="end:Q",
        y=alt.Y("top:Q", title=labels["y"], axis=whole),
        y2="bottom:Q",
        color=alt.Color("cut:N", scale=alt.Scale(domain=[False, True], range=["#4c78a8", "#e45756"]), legend=None),
        tooltip=["start:Q", "end:Q", "count:Q"],
    )
    rule = alt.Chart(pd.DataFrame({"max_length": [stats.max_length]})).mark_rule(
        color="#d62728", strokeDash=[6, 3], size=2).encode(x="max_length:Q")
    return (bars + rule).properties(height=260)


def histogram_bins(lengths: list[int], max_length: int, n_bins: int = 40) -> tuple[pd.DataFrame, int]:
    """(rows (start, end, count, cut) of the non-empty bins, the axis end): bins of a whole, round number of tokens
    from 0 past both the longest record and max_length; each bin counts kept (cut=False) and truncated (cut=True)
    records apart."""
    top = max(max(lengths, default=0), max_length) + 1
    raw = top / n_bins
    step = next(m * 10**k for k in range(12) for m in (1, 2, 5) if m * 10**k >= raw)
    edges = np.arange(0, top + step, step)
    values = np.asarray(lengths, dtype=np.int64)
    rows = []
    for cut, part in ((False, values[values <= max_length]), (True, values[values > max_length])):
        counts, _ = np.histogram(part, bins=edges)
        rows += [{"start": int(a), "end": int(b), "count": int(c), "cut": cut}
                 for a, b, c in zip(edges[:-1], edges[1:], counts) if c]
    return pd.DataFrame(rows, columns=["start", "end", "count", "cut"]), int(edges[-1])


MASK_STYLE = """<style>
.mask-view { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9rem; line-height: 1.9;
             white-space: pre-wrap; word-break: break-all; }
.mask-view span { margin: 0 1px; padding: 1px 0; border-radius: 2px; background: #eeeeee; color: #555555; }
.mask-view span.trained { background: #c7f0c2; color: #0b3d0b; border-bottom: 2px solid #2e7d32; }
</style>"""


def mask_html(pieces: list[tuple[str, bool]]) -> str:
    """The label-mask view: one span per token, trained tokens highlighted. Every token is HTML-escaped, so a
    record holding `<script>` or `<|im_start|>` shows as text."""
    spans = "".join(f'<span class="trained">{html.escape(text)}</span>' if trained else
                    f"<span>{html.escape(text)}</span>" for text, trained in pieces)
    return f'{MASK_STYLE}<div class="mask-view">{spans}</div>'


def record_mask(tokenizer, conversation: list[dict], persona: str, max_length: int):
    """(token pieces with trained flags, the Encoded record) for one record, encoded exactly as training will."""
    from trainer_core.data.chat_format import encode_conversations, render_mask

    enc = encode_conversations(tokenizer, [conversation], persona=persona, max_length=max_length)[0]
    return render_mask(tokenizer, enc), enc


def subset_panel(path: Path, report: DataReport) -> None:
    """What the last cut did (when its file is the one shown), and the form for a new one: first N / random N / all,
    optionally without exact duplicates."""
    state = st.session_state
    done = state.get("data.subset_done")
    if done is not None and done.path.resolve() == path.resolve():
        # "selected" only while the Train form still trains on it: once another file was picked there, the page
        # offers "use this file" and the box must not say otherwise.
        selected = resolve(str(form.value("data", "path") or "")) == path.resolve()
        st.success(t("data.cut.done" if selected else "data.cut.written", path=shown_path(done.path),
                     kept=done.n_kept, of=done.n_of, dups=done.n_duplicates), icon=":material/content_cut:")
    with st.expander(t("data.cut.title"), icon=":material/content_cut:"):
        st.caption(t("data.cut.note"))
        state.setdefault("data.cut.mode", "first")
        mode = st.radio(t("data.cut.mode"), ["all", "first", "random"], key="data.cut.mode", horizontal=True,
                        format_func=option_labels("data.cut.mode."))
        # The count is per file: a small file's value must not stay when a larger one is opened.
        if state.get("data.cut.for") != str(path) or not 1 <= (state.get("data.cut.n") or 0) <= report.n_usable:
            state["data.cut.n"], state["data.cut.for"] = min(50, report.n_usable), str(path)
        state.setdefault("data.cut.seed", 0)
        c1, c2 = st.columns(2)
        c1.number_input(t("data.cut.n"), min_value=1, max_value=report.n_usable, key="data.cut.n",
                        disabled=mode == "all")
        c2.number_input(t("data.cut.seed"), min_value=0, key="data.cut.seed", disabled=mode != "random")
        dedupe = st.checkbox(t("data.cut.dedupe", n=report.n_duplicates), key="data.cut.dedupe")
        st.button(t("data.cut.go"), key="data.cut.go", icon=":material/save:", disabled=mode == "all" and not dedupe,
                  on_click=make_subset, args=(path,))
        if state.get("data.subset_error"):
            st.error(say(state.pop("data.subset_error")), icon=":material/error:")


def make_subset(path: Path) -> None:
    """Button callback: cut a new dataset file from ``path`` as the widgets ``data.cut.*`` say (first N / random N /
    all, optionally without exact duplicates), select it by its path on this page and in the Train form, and
    remember what was done to say so. It runs before the page script, so it may set the source widgets, and it
    reads the widgets' values now (arguments bound at render time would be those of the run before the click)."""
    state = st.session_state
    mode, n = state.get("data.cut.mode"), int(state.get("data.cut.n") or 0)
    try:
        cut = write_subset(path, first=n if mode == "first" else None, sample=n if mode == "random" else None,
                           seed=int(state.get("data.cut.seed") or 0), dedupe=bool(state.get("data.cut.dedupe")))
    except UserError as e:
        state["data.subset_error"] = e
        return
    state["p.data.source"] = "path"
    state["p.data.server_path"] = shown_path(cut.path)
    state["data.subset_done"] = cut
    use_in_form(cut.path)
