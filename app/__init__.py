"""Streamlit helpers for the dashboard: labels, the shared sidebar frame, and the view logic behind each page.

Pages in `pages/` are short scripts that lay out widgets; what they compute lives here or in `trainer_core`.
"""
