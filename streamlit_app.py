"""Role-play fine-tuning studio: the dashboard server. Every page reads and writes through `app/`.

    ./run_app.sh   or   python -m app.serve [streamlit flags]   (it refuses to listen beyond this machine without a
                                                               password, then runs `streamlit run streamlit_app.py`)

This one file plays two parts. `streamlit run` imports it as a module and finds `app`, an `st.App`: the pages plus the
streamed model download route (app/file_route.py). Streamlit then executes it as `__main__` for every page run: the
frame (sign-in, menu, sidebar) around the page the visitor asked for. Runs live in run directories, not in this
process: restart the dashboard at any time and it re-attaches.
"""

import streamlit as st

if __name__ != "__main__":  # imported by `streamlit run` to be served
    from app import file_route

    app = st.App("streamlit_app.py", routes=file_route.routes())
else:  # one page run
    from app import frame, streamlit_zh, train_form, warmup
    from app.i18n import lang, t

    warmup.start()  # transformers' lazy imports race between session threads: import once, before any page runs

    st.set_page_config(page_title=t("app.title"), page_icon=":material/theater_comedy:", layout="wide")
    streamlit_zh.install(lang())
    if not frame.signed_in():
        st.stop()

    page = st.navigation([
        st.Page("pages/data.py", title=t("page.data"), icon=":material/dataset:", url_path="data", default=True),
        st.Page("pages/train.py", title=t("page.train"), icon=":material/tune:", url_path="train"),
        st.Page("pages/monitor.py", title=t("page.monitor"), icon=":material/monitoring:", url_path="monitor"),
        st.Page("pages/chat.py", title=t("page.chat"), icon=":material/chat:", url_path="chat"),
        st.Page("pages/runs.py", title=t("page.runs"), icon=":material/history:", url_path="runs"),
    ])
    train_form.ensure_defaults()  # the Data and Chat pages read the Train form too
    frame.sidebar(page.url_path)
    if not warmup.ready():
        with st.spinner(t("app.warming")):
            warmup.wait()
    warmup.wait()  # re-raises an import failure on every run, not just the first
    page.run()
