"""The dashboard starts without torch: only the Gradients page imports it, and only when it is opened.

The other pages read the result columns from ``tritonbn.schema``, which must stay free of torch and triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from dashboard_fixtures import APP, PAGES, REPO

NON_GRADIENT_PAGES = [p for p in PAGES if p != "gradients"]
SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    PAGES = {pages!r}
    from dashboard import data, plots, ui  # noqa: F401
    heavy = ("torch", "triton")
    loaded = lambda: sorted(m for m in sys.modules if m in heavy or m.startswith("tritonbn."))  # noqa: E731
    after_import = loaded()
    from streamlit.testing.v1 import AppTest
    exceptions = []
    for page in PAGES:
        at = AppTest.from_file({app!r}, default_timeout=30).run()
        if page != "overview":
            at.switch_page("app_pages/" + page + ".py").run()
        exceptions += [page + ": " + e.value for e in at.exception]
        exceptions += [] if at.title else [page + ": no title"]
    after_pages = loaded()
    print(json.dumps({{"after_import": after_import, "after_pages": after_pages, "exceptions": exceptions}}))
    """
)


def test_no_torch_outside_the_gradients_page(folders):
    env = {**os.environ, "TRITONBN_RESULTS": str(folders["good"])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(repo=str(REPO), app=str(APP), pages=NON_GRADIENT_PAGES)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["exceptions"] == []
    assert out["after_import"] == ["tritonbn.schema"]
    assert out["after_pages"] == ["tritonbn.schema"], "a non-gradients page imported " + ", ".join(out["after_pages"])
