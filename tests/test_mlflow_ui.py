"""The MLflow UI in a real headless browser: `nmt ui` on the tiny pipeline's store.

Starts the server exactly as a user would (``nmt ui --port N`` in the project), opens the runs
table and the compare view in Debian's chromium through Playwright, and checks what is on screen.
Screenshots go to the test's tmp_path and to ``reports/ui/`` of the tiny project.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.pipeline_helpers import SHARED, project_env, trained
from tests.server_helpers import free_port, running_server

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPERIMENT = "multi30k-en-de"

if not (SHARED / "dvc-remote").exists():
    pytest.skip("../shared/dvc-remote is not beside the checkout", allow_module_level=True)
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright missing: pip install -e '.[dev]'"
)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tiny_pipeline, tmp_path_factory):
    """`nmt ui` on a free loopback port; yields its base URL and stops it afterwards."""
    repo, port = tiny_pipeline.repo, free_port()
    stores_before = sorted(repo.rglob("mlflow.db"))
    base = f"http://127.0.0.1:{port}"
    with running_server(
        [sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port)],
        cwd=repo,
        env=project_env(repo),
        ready_url=f"{base}/health",
        log_file=tmp_path_factory.mktemp("mlflow-ui") / "server.log",
    ):
        # The server reads the pipeline's store, and did not quietly start another (mlflow#23634).
        assert sorted(repo.rglob("mlflow.db")) == stores_before == [repo / "mlruns" / "mlflow.db"]
        yield base


@pytest.fixture(scope="module")
def experiment(server) -> dict:
    """The experiment and its architecture runs (name -> id) as the server reports them."""
    query = urllib.parse.urlencode({"experiment_name": EXPERIMENT})
    found = get_json(f"{server}/api/2.0/mlflow/experiments/get-by-name?{query}")["experiment"]
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [found["experiment_id"]]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        runs = json.loads(response.read())["runs"]
    by_name = {run["info"]["run_name"]: run["info"]["run_id"] for run in runs}
    return {"id": found["experiment_id"], "runs": by_name}


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )
        context.set_default_timeout(60_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def close_assistant(page) -> None:
    """The MLflow Assistant side panel covers the right part of the table."""
    close = page.locator('button[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()


def save_screenshot(page, tmp_path: Path, repo: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path))
    keep = repo / "reports" / "ui"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, keep / name)
    return path


SAME_LINE_JS = """
(label) => {
    const box = label.getBoundingClientRect();
    const middle = box.top + box.height / 2;
    return [...document.querySelectorAll("body *")]
        .filter((e) => e instanceof HTMLElement && e.children.length === 0)
        .filter((e) => /^-?[0-9.]+$/.test(e.innerText.trim()))
        .map((e) => [e.getBoundingClientRect(), e.innerText.trim()])
        .filter(([r]) => r.left > box.right && Math.abs(r.top + r.height / 2 - middle) < 4)
        .sort(([a], [b]) => a.left - b.left)
        .map(([, text]) => text);
}
"""


def texts_on_the_same_line(label) -> list[str]:
    """The numbers shown to the right of `label`, on its line, left to right."""
    return label.evaluate(SAME_LINE_JS)


def bleu_of(repo: Path, arch: str, split: str) -> float:
    return json.loads((repo / "metrics" / f"{trained(arch)}.json").read_text())[split]["bleu"]


def test_runs_table_lists_every_architecture_with_its_bleu(
    tiny_pipeline, server, experiment, page, tmp_path
):
    archs = tiny_pipeline.params["architectures"]
    metric = f"test/{tiny_pipeline.params['data']['test_splits'][0]}/bleu"
    page.goto(f"{server}/#/experiments/{experiment['id']}/runs")
    parent = page.locator("[role=row]", has_text="pipeline-").first
    parent.wait_for()
    close_assistant(page)
    # The architecture runs are nested under the pipeline run: expand it.
    parent.locator("button[data-component-id*=runnamecellrenderer]").click()
    for arch in archs:
        page.get_by_role("link", name=trained(arch), exact=True).wait_for()
    # Show the primary test BLEU as a column (Columns -> search -> tick it).
    page.get_by_role("button", name="Columns", exact=True).click()
    page.get_by_placeholder("Search columns").fill(metric)
    tree = page.get_by_test_id("column-selector-tree")
    tree.locator("[class*=tree-treenode]").filter(has_text=metric).filter(
        has_not_text=f"{metric}_"
    ).locator("[class*=tree-checkbox]").first.click()
    page.keyboard.press("Escape")
    column = f'[col-id="metrics.`{metric}`"]'
    page.locator(f"[role=columnheader]{column}").first.wait_for()
    for arch in archs:
        # Name and metric cells sit in separate (pinned / scrolling) rows of one row-index.
        link = page.get_by_role("link", name=trained(arch), exact=True)
        name_row = page.locator("[role=row]", has=link)
        index = name_row.first.get_attribute("row-index")
        cell = page.locator(f"[role=row][row-index='{index}'] [role=gridcell]{column}").first
        cell.scroll_into_view_if_needed()
        shown = float(cell.inner_text().strip())
        expected = bleu_of(tiny_pipeline.repo, arch, metric.split("/")[1])
        assert shown == pytest.approx(expected, abs=0.01), arch
    shot = save_screenshot(page, tmp_path, tiny_pipeline.repo, "runs_table.png")
    assert shot.stat().st_size > 10_000


def test_compare_view_renders_two_architectures(tiny_pipeline, server, experiment, page, tmp_path):
    first, second = tiny_pipeline.params["architectures"][:2]
    metric = f"test/{tiny_pipeline.params['data']['test_splits'][0]}/bleu"
    runs = [experiment["runs"][trained(first)], experiment["runs"][trained(second)]]
    query = urllib.parse.urlencode(
        {"runs": json.dumps(runs), "experiments": json.dumps([experiment["id"]])}
    )
    page.goto(f"{server}/#/compare-runs?{query}")
    page.get_by_text("Comparing 2 Runs").wait_for()
    close_assistant(page)
    for name in (first, second):
        page.get_by_role("cell", name=trained(name), exact=True).first.wait_for()
    with contextlib.suppress(sync_api.TimeoutError):  # only for a complete screenshot
        page.locator(".js-plotly-plot").first.wait_for(timeout=15_000)
    save_screenshot(page, tmp_path, tiny_pipeline.repo, "compare_runs.png")
    # The metrics table is a virtualized grid of divs: read the numbers on the metric's line.
    name = page.get_by_text(metric, exact=True).last
    name.scroll_into_view_if_needed()
    values = [float(text) for text in texts_on_the_same_line(name)]
    expected = [bleu_of(tiny_pipeline.repo, arch, metric.split("/")[1]) for arch in (first, second)]
    assert values == pytest.approx(expected, abs=0.01)
    shot = save_screenshot(page, tmp_path, tiny_pipeline.repo, "compare_runs_metrics.png")
    assert shot.stat().st_size > 10_000
