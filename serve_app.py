"""The dashboard server: Streamlit's page script (`streamlit_app.py`) plus the streamed model download route.

    python -m app.serve [streamlit flags]      (what run_app.sh runs; it runs `streamlit run serve_app.py`)

`streamlit run streamlit_app.py` still serves every page, but without this route the Runs page can only name a
model's folder on the server instead of offering it as a download.
"""

import streamlit as st

from app import file_route

app = st.App("streamlit_app.py", routes=file_route.routes())
