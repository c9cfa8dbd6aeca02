"""Segmentation workbench — home page. Run with ``streamlit run app.py`` (or ``make run``)."""

import streamlit as st

st.set_page_config(page_title="Segmentation workbench", page_icon="🩻", layout="wide")
st.title("Medical image segmentation workbench")
st.write(
    "Demo segmentation models, browse datasets, find and resolve contradictory ground truth, "
    "correct masks by hand and compare models side by side. Pick a page in the sidebar."
)
