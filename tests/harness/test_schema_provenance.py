import csv
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tritonbn import provenance, schema
from tritonbn.schema import (
    BENCH_COLUMNS,
    CORRECTNESS_COLUMNS,
    PROVENANCE_COLUMNS,
    CsvWriter,
    result_path,
    unique_path,
)

README = Path(__file__).resolve().parents[2] / "bench_results" / "README.md"


@pytest.mark.parametrize("name", [n for n in schema.__all__ if n.endswith("_COLUMNS")])
def test_every_column_is_documented(name):
    """Each column a tool writes is explained in bench_results/README.md (as `column`), once per list."""
    columns = getattr(schema, name)
    assert len(set(columns)) == len(columns)
    documented = set(re.findall(r"`([A-Za-z_0-9]+)`", README.read_text(encoding="utf-8")))
    assert set(columns) - documented == set()


def test_columns_are_required_then_appended():
    assert (*schema.BENCH_REQUIRED, *schema.BENCH_APPENDED) == BENCH_COLUMNS
    assert (*schema.CORRECTNESS_REQUIRED, *schema.CORRECTNESS_APPENDED) == CORRECTNESS_COLUMNS
    for columns in (BENCH_COLUMNS, CORRECTNESS_COLUMNS):
        assert columns[: len(PROVENANCE_COLUMNS)] == PROVENANCE_COLUMNS
    assert set(schema.RECORD_KINDS) == set(schema.RESULT_KINDS) - {"bench", "check"}


def test_schema_imports_neither_torch_nor_triton():
    """The dashboard reads the columns from tritonbn.schema and must start without torch."""
    code = (
        "import sys, tritonbn.schema; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton') or m.startswith('tritonbn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['tritonbn', 'tritonbn.schema']"


def test_provenance_has_exactly_the_provenance_columns():
    prov = provenance.collect("cpu")
    assert tuple(prov) == PROVENANCE_COLUMNS
    assert prov["gpu"] == "cpu" and prov["compute_capability"] == ""
    dt.datetime.strptime(prov["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert prov["git_sha"]


def test_git_sha_outside_git_is_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(provenance.GIT_SHA_ENV, raising=False)
    assert provenance.git_sha(tmp_path) == "unknown"


def test_git_sha_of_a_copied_tree_comes_from_the_environment(tmp_path, monkeypatch):
    """A source tree copied without .git (e.g. to a GPU machine) names its commit through TRITONBN_GIT_SHA."""
    monkeypatch.setenv(provenance.GIT_SHA_ENV, "abc1234-dirty")
    assert provenance.git_sha(tmp_path) == "abc1234-dirty"
    monkeypatch.setenv(provenance.GIT_SHA_ENV, "a/b c")  # only what a file name can hold
    assert provenance.git_sha(tmp_path) == "a-b-c"


def test_a_tree_inside_another_checkout_is_not_that_checkout(tmp_path, monkeypatch):
    import subprocess

    try:
        subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git unavailable")
    inner = tmp_path / "copy"
    inner.mkdir()
    monkeypatch.setenv(provenance.GIT_SHA_ENV, "feed123")
    assert provenance.git_sha(inner) == "feed123"


def test_git_sha_marks_dirty_trees(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    try:
        git("init", "-q")
        git("-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q", "--allow-empty", "-m", "x")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git unavailable")
    (tmp_path / "f").write_text("1")
    clean = provenance.git_sha(tmp_path)  # untracked files do not make a tree dirty
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    git("add", "f")
    assert provenance.git_sha(tmp_path) == f"{clean}-dirty"


def test_slugs():
    assert provenance.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert provenance.device_slug("cpu-interpreter") == "cpu-interpreter"
    assert provenance.slugify("  ") == "unknown"
    assert provenance.utc_date("2025-01-31T12:00:00Z") == "2025-01-31"


def test_result_paths_are_append_only(tmp_path):
    p = result_path(tmp_path, "gpu-x", "2025-01-31", "abc1234")
    assert p == tmp_path / "gpu-x" / "2025-01-31_abc1234.csv"
    c = result_path(tmp_path, "gpu-x", "2025-01-31", "abc1234", kind="check")
    assert c.name == "2025-01-31_abc1234_check.csv"
    c.parent.mkdir(parents=True)
    c.write_text("x")
    assert unique_path(c).name == "2025-01-31_abc1234_2_check.csv"
    with pytest.raises(ValueError):
        result_path(tmp_path, "g", "d", "s", kind="other")
    for kind in ("env", "tests", "kernels", "sync", "train"):
        p = result_path(tmp_path, "gpu-x", "2025-01-31", "abc1234", kind=kind)
        assert p.name == f"2025-01-31_abc1234_{kind}.csv"
        p.write_text("x")
        assert unique_path(p).name == f"2025-01-31_abc1234_2_{kind}.csv"


def test_csv_writer_never_overwrites(tmp_path):
    cols = ("a", "b")
    target = tmp_path / "sub" / "run.csv"
    with CsvWriter(target, cols) as w:
        w.write({"a": 1, "b": 0.1})
    with CsvWriter(target, cols) as w2:
        w2.write({"a": True, "b": None})
    assert w.path == target and w2.path == tmp_path / "sub" / "run_2.csv"
    rows = list(csv.DictReader(target.open()))
    assert rows == [{"a": "1", "b": "0.1"}]
    assert list(csv.DictReader(w2.path.open())) == [{"a": "true", "b": ""}]
    with CsvWriter(tmp_path / "empty.csv", cols) as w3, pytest.raises(KeyError):
        w3.write({"a": 1})
    assert not (tmp_path / "empty.csv").exists()  # nothing measured, no file
