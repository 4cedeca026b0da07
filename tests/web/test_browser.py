"""Browser tests: headless Debian Chromium (Playwright) against a live waitress server.

The flow: log in from the keyboard; open a study and scroll it; switch windows; break glass with a
reason; as compliance (in Chinese, then switching to English) see that event.  Screenshots go to
test-artifacts/browser/.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from medsearch.web.serve import make_server

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
PASSWORD = "correct-horse-battery"
STUDY, SERIES = "st0123456789abcdef", "se0123456789abcdef"
# A function, not an expression: the page's CSP forbids eval, and Playwright evals bare expressions.
SLICE_LOADED = "() => { const i = document.getElementById('slice'); return i.complete && i.naturalWidth === 64; }"


class _Viewer(BaseHTTPRequestHandler):
    """Stands in for the hospital's PACS web viewer, which 'Open in PACS' redirects to."""

    opened: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Viewer.opened.append(self.path)
        body = b"<!doctype html><title>PACS viewer</title><h1>PACS viewer</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def viewer():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Viewer)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, web_instance_factory, viewer):
    inst = web_instance_factory(tmp_path_factory.mktemp("browser") / "instance",
                                viewer_url_template=viewer + "/viewer?StudyInstanceUID={study_uid}&acc={accession}")
    server, _scheme = make_server(inst, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.close()
    thread.join(10)
    inst.close()


# The machine is shared by parallel test runs: generous waits, never sleeps.
expect.set_options(timeout=20_000)


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), "Chromium is missing: run 'bash tests/system_deps.sh'"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=60_000)
        yield b
        b.close()


def _shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _login_with_keyboard(page, base, user):
    page.goto(base + "/")
    expect(page).to_have_url(f"{base}/login?next=/")
    expect(page.locator("#username")).to_be_focused()  # autofocus: typing works at once
    page.keyboard.type(user)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def _no_external_requests(page, base, seen):
    page.on("request", lambda req: seen.append(req.url) if not req.url.startswith(base) else None)


def test_radiologist_flow_study_scroll_and_break_glass(browser, live, viewer):
    ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    external: list[str] = []
    _no_external_requests(page, live, external)
    page.goto(live + "/login")
    _shot(page, "01-login")
    _login_with_keyboard(page, live, "radiologist")
    expect(page).to_have_url(live + "/")
    expect(page.locator("#q")).to_be_visible()
    _shot(page, "02-search-page")

    page.goto(f"{live}/studies/{STUDY}")
    slice_img = page.locator("#slice")
    expect(slice_img).to_have_attribute("src", f"/api/v1/series/{SERIES}/slices/12.png?window=lung")
    page.wait_for_function(SLICE_LOADED)
    expect(page.locator("svg.region")).to_be_visible()  # the key slice opens with the region outlined
    _shot(page, "03-study-key-slice")
    page.locator("body").press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#slice-no")).to_have_text("15")
    expect(slice_img).to_have_attribute("src", f"/api/v1/series/{SERIES}/slices/15.png?window=lung")
    expect(page.locator("svg.region")).to_be_hidden()
    page.keyboard.press("m")
    expect(slice_img).to_have_attribute("src", f"/api/v1/series/{SERIES}/slices/15.png?window=mediastinum")
    page.keyboard.press("k")
    expect(page.locator("#slice-no")).to_have_text("12")
    page.wait_for_function(SLICE_LOADED)
    _shot(page, "04-study-mediastinal-window")

    page.locator("#breakglass summary").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#reason")).to_be_focused()
    page.keyboard.type("Compare with prior CT for tumour board")
    _shot(page, "05-break-glass")
    page.locator("#breakglass-go").focus()
    with page.expect_navigation(url=viewer + "/**"):
        page.keyboard.press("Enter")
    wanted = "/viewer?StudyInstanceUID=1.2.840.99999.1.cdef&acc=ACC-cdef"
    assert page.url == viewer + wanted and wanted in _Viewer.opened
    expect(page.locator("h1")).to_have_text("PACS viewer")
    assert [u for u in external if not u.startswith(viewer)] == [], "the page loaded something from outside"
    ctx.close()


def test_compliance_sees_the_break_glass_in_chinese_then_english(browser, live):
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    _login_with_keyboard(page, live, "compliance")
    expect(page).to_have_url(live + "/audit")
    expect(page.locator("h1")).to_have_text("审计")
    row = page.locator("#reids tbody tr").filter(has_text="Compare with prior CT for tumour board")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("radiologist")
    expect(row).to_contain_text(STUDY[:16])
    page.locator("#verify").click()
    expect(page.locator("#verify-result")).to_contain_text("哈希链完整")
    _shot(page, "06-audit-zh")
    page.locator("#lang-switch").click()
    expect(page.locator("h1")).to_have_text("Audit")
    page.locator("input[name=user]").fill("radiologist")
    page.keyboard.press("Enter")
    page.locator("#report-btn").click()
    expect(page.locator("#report")).to_contain_text("Compare with prior CT for tumour board")
    _shot(page, "07-audit-en-report")
    ctx.close()
