"""tritonbn dashboard: ``streamlit run dashboard/streamlit_app.py [-- --results FOLDER]`` (or ``make dashboard``).

Reads the benchmark and correctness CSVs under a results folder (``bench_results/`` by default) and never
imports torch at start-up: only the Gradients page does, when it is opened.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402

from dashboard import ui  # noqa: E402

st.set_page_config(page_title="tritonbn dashboard", page_icon=":material/speed:", layout="wide")

pages = [
    st.Page("app_pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("app_pages/throughput.py", title="Throughput", icon=":material/speed:"),
    st.Page("app_pages/host.py", title="Launches & host", icon=":material/timer:"),
    st.Page("app_pages/kernels.py", title="Kernels", icon=":material/memory:"),
    st.Page("app_pages/correctness.py", title="Correctness", icon=":material/rule:"),
    st.Page("app_pages/gradients.py", title="Gradients", icon=":material/functions:"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/history:"),
]
page = st.navigation(pages)
st.sidebar.markdown("**tritonbn** · batch norm in Triton")
ui.sidebar_results_dir()
page.run()
