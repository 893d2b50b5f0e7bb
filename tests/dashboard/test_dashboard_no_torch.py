"""The dashboard starts without torch: only the Gradients page imports it, and only when it is opened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from dashboard_fixtures import APP, REPO

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    from dashboard import data, plots, ui  # noqa: F401
    after_import = sorted(m for m in ("torch", "tritonbn") if m in sys.modules)
    from streamlit.testing.v1 import AppTest
    exceptions = []
    for page in ("overview", "throughput", "correctness", "runs"):
        at = AppTest.from_file({app!r}, default_timeout=30).run()
        if page != "overview":
            at.switch_page("app_pages/" + page + ".py").run()
        exceptions += [page + ": " + e.value for e in at.exception]
        exceptions += [] if at.title else [page + ": no title"]
    after_pages = sorted(m for m in ("torch", "tritonbn", "triton") if m in sys.modules)
    print(json.dumps({{"after_import": after_import, "after_pages": after_pages, "exceptions": exceptions}}))
    """
)


def test_no_torch_outside_the_gradients_page(folders):
    env = {**os.environ, "TRITONBN_RESULTS": str(folders["good"])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(repo=str(REPO), app=str(APP))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["exceptions"] == []
    assert out["after_import"] == []
    assert out["after_pages"] == [], "a non-gradients page imported " + ", ".join(out["after_pages"])
