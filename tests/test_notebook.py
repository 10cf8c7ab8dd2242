"""examples/notebook.ipynb runs top to bottom on a real IPython kernel (nbclient)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _text(cell: Any) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(str(out.get("data", {}).get("text/plain", "")))
    return "".join(parts)


@pytest.mark.redis
def test_notebook_runs_on_a_real_kernel(tmp_env: pytest.MonkeyPatch, redis_url: str) -> None:
    tmp_env.setenv("REDIS_URL", redis_url)  # the kernel inherits the environment
    nb = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [_text(c) for c in code]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert "scraped 40 of 40" in outputs[1]
    assert "lead 7: {'score': 7}" in outputs[1]
    assert "removed 200 keys" in outputs[1]
    assert "caching leads: 100%" in outputs[1]  # the tqdm bar drew to the end
    assert "async scraped 40 status ok: True" in outputs[2]
    assert "answer: 42" in outputs[2]
    assert "across cells" in outputs[4]
    assert "closed: True" in outputs[4]


@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("cache.py", "computed 1 time(s) (single-flight)"),
        ("scraper.py", "50/51 ok"),
        ("resources.py", "text: 92000 ->"),
        ("tasks.py", "webhook: delivered after 3 attempts"),
        ("monitoring.py", "[cache_hit_rate = 0.0]"),
        ("sync_script.py", "scraped: 10 of 10"),
        ("database.py", "inserted 10000"),
        ("chrome.py", "instances created=1 tasks=3"),
    ],
)
def test_example_scripts_run(
    script: str, expect: str, tmp_env: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    if script == "database.py":
        env["DATABASE_URL"] = request.getfixturevalue("database_url")
    if script == "chrome.py":
        request.getfixturevalue("chrome_paths")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=EXAMPLES,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert expect in done.stdout


def test_web_example_builds_its_app(tmp_env: pytest.MonkeyPatch) -> None:
    import importlib.util

    tmp_env.setenv("LEADPERF_ADMIN_TOKEN", "example-token-0123456789")
    spec = importlib.util.spec_from_file_location("web_app", EXAMPLES / "web_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = set(module.app.openapi()["paths"])
    assert {"/performance/status", "/performance/optimize/{profile}"} <= paths
    module.perf.close()
