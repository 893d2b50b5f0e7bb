"""Streamlit glue shared by the pages: the results folder, cached loading, and how problems are shown."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import data

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO_ROOT / "bench_results"
RESULTS_KEY = "results_dir"
ENV_VAR = "TRITONBN_RESULTS"

NO_BENCHMARKS = (
    "No GPU benchmark results yet in `{root}`. Run `tritonbn-bench` on a CUDA machine (`make bench` writes "
    "`bench_results/<gpu>/<date>_<sha>.csv`), then reload this page."
)
NO_CORRECTNESS = (
    "No correctness results yet in `{root}`. Run `tritonbn-check` (`make check`; on a machine without a GPU it "
    "runs the kernels in Triton's interpreter), then reload this page."
)


def default_results_dir(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> str:
    """``--results`` after ``--`` on the ``streamlit run`` command line, else ``$TRITONBN_RESULTS``, else the
    repository's ``bench_results/``."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--results")
    ns, _ = parser.parse_known_args(argv if argv is not None else __import__("sys").argv[1:])
    env = os.environ if environ is None else environ
    return ns.results or env.get(ENV_VAR) or str(DEFAULT_RESULTS)


def shown(root: Path) -> str:
    """How a folder is shown on the page: relative to the working directory when it is below it."""
    try:
        return str(Path(root).relative_to(Path.cwd())) or "."
    except ValueError:
        return str(root)


def resolve(path: str) -> Path:
    """A user-typed folder: relative paths against the working directory, else against the repository."""
    p = Path(path.strip() or str(DEFAULT_RESULTS)).expanduser()
    if p.is_absolute():
        return p
    if (Path.cwd() / p).exists() or not (REPO_ROOT / p).exists():
        return (Path.cwd() / p).resolve()
    return (REPO_ROOT / p).resolve()


def sidebar_results_dir() -> Path:
    """The results-folder input in the sidebar; its value is kept in the session for every page."""
    if RESULTS_KEY not in st.session_state:
        st.session_state[RESULTS_KEY] = default_results_dir()
    st.sidebar.text_input(
        "Results folder",
        key=RESULTS_KEY,
        help="Every *.csv below this folder is read. Default: `--results` after `--`, $TRITONBN_RESULTS, "
        "or bench_results/ in the repository.",
    )
    root = resolve(st.session_state[RESULTS_KEY])
    n = len(data.csv_files(root))
    st.sidebar.caption(f"`{shown(root)}` — {n} CSV file{'s' if n != 1 else ''}")
    if st.sidebar.button("Reload results", help="Results are re-read automatically when a file changes."):
        _load_cached.clear()
    return root


def results_root() -> Path:
    return resolve(st.session_state.get(RESULTS_KEY) or default_results_dir())


@st.cache_data(show_spinner="Reading result files …", max_entries=16)
def _load_cached(root: str, signature: tuple) -> data.Results:
    del signature  # only part of the cache key: a changed, added or removed file reloads
    return data.load_results(root)


def load(show_problems: bool = True) -> tuple[Path, data.Results]:
    """Load (cached on the folder's files and mtimes) and show the problems on the page."""
    root = results_root()
    res = _load_cached(str(root), data.signature(root))
    if show_problems:
        problems(root, res)
    return root, res


def problems(root: Path, res: data.Results) -> None:
    if not root.exists():
        st.error(
            f"Results folder `{shown(root)}` does not exist. Set another one in the sidebar, or create it by running "
            "`tritonbn-bench` / `tritonbn-check`."
        )
        return
    if not root.is_dir():
        st.error(f"`{shown(root)}` is a file, not a folder: set the results folder in the sidebar.")
        return
    if not res.files:
        st.info(f"No result files (`*.csv`) in `{shown(root)}` yet.")
        return
    msgs = list(res.problems)
    if not msgs:
        return
    head = "\n".join(f"- {m}" for m in msgs[:6])
    more = f"\n- … and {len(msgs) - 6} more (see the Runs page)" if len(msgs) > 6 else ""
    st.error(f"**{len(msgs)} problem(s) reading the result files** — the rest is shown below.\n\n{head}{more}")


def speedup_text(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:.2f}×"


def run_label(source: str, frame: pd.DataFrame) -> str:
    """``start time · file (gpu, sha)`` for run pickers, so that runs read in the order they were made."""
    g = frame[frame["source"] == source]
    if g.empty:
        return source
    first = g.iloc[0]
    who = first.get("gpu") or first.get("device") or ""
    extra = ", ".join(str(v) for v in (who, first.get("git_sha")) if v and str(v) != "nan")
    return f"{data.run_started(frame, source)} · {source}" + (f" ({extra})" if extra else "")


def stop_without(frame: pd.DataFrame, what: str, command: str, writes: str, root: Path) -> None:
    """Say that the results folder has no ``what`` yet and which command makes it, and stop the page."""
    if frame.empty:
        st.info(f"No {what} yet in `{shown(root)}`. Run {command}, which writes `{writes}`, then reload this page.")
        st.stop()


def latest_run_picker(
    container, label: str, frame: pd.DataFrame, help: str, detail: str | None = None, detail_format: str = "{}"
) -> str:
    """A select box of the runs of ``frame`` (:func:`dashboard.data.runs`: oldest first) with the newest
    selected, labelled by :func:`run_label` and, with ``detail``, that column's value of the run (formatted
    with ``detail_format``)."""

    def label_of(source: str) -> str:
        text = run_label(source, frame)
        if detail is None:
            return text
        return f"{text} · " + detail_format.format(frame.loc[frame["source"] == source, detail].iloc[0])

    runs = data.runs(frame)
    return container.selectbox(label, runs, index=len(runs) - 1, format_func=label_of, help=help)
