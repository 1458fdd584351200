"""trainer_core: the fine-tuning studio's library. No Streamlit import anywhere in this package."""
