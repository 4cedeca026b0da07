"""Browser tests: headless Debian Chromium (Playwright) against a live waitress server.

The world is real end to end: a synthetic archive (3 studies) ingested through de-identification,
the encoder (the real network with seeded, untrained weights: ranking quality is the benchmarks'
business, not this test's) and the index; search through the real parser and pipeline.

The flow: log in from the keyboard; search in English and in Chinese; see the result images; open a
study and scroll it; switch windows; "more like this"; break glass with a reason; as compliance (in
Chinese, then switching to English) see that event.  Screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from medsearch.web.serve import make_server

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-sync"]
PASSWORD = "correct-horse-battery"
QUERY_EN = "nodule in the right upper lobe"
QUERY_ZH = "左肺上叶结节"
REASON = "Compare with prior CT for tumour board"
# A function, not an expression: the page's CSP forbids eval, and Playwright evals bare expressions.
SLICE_LOADED = "() => { const i = document.getElementById('slice'); return i.complete && i.naturalWidth > 0; }"
IMAGES_LOADED = """() => { const imgs = [...document.querySelectorAll('.card img')];
  return imgs.length > 0 && imgs.every(i => i.getAttribute('src') && i.complete && i.naturalWidth > 0); }"""


@pytest.fixture(scope="module")
def live(world):
    server, _scheme = make_server(world.inst, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.close()
    thread.join(10)


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


def _search(page, text):
    page.locator("#q").fill("")
    page.locator("#q").focus()
    page.keyboard.type(text)
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_be_visible()
    expect(page.locator(".card").first).to_be_visible()
    page.wait_for_function(IMAGES_LOADED)  # thumbnails, then the deferred key slices


def test_radiologist_flow(browser, live, viewer, world):
    labels = world.labels
    ctx = browser.new_context(locale="en-US", viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    external: list[str] = []
    _no_external_requests(page, live, external)
    page.goto(live + "/login")
    _shot(page, "01-login")
    _login_with_keyboard(page, live, "radiologist")
    expect(page).to_have_url(live + "/")

    # 1. English
    _search(page, QUERY_EN)
    chip = page.locator("#chips fieldset").first
    expect(chip.locator("select[name=c0_finding]")).to_have_value("nodule")
    expect(chip.locator("select[name=c0_site]")).to_have_value("right upper lobe")
    expect(page.locator(".card .score").first).to_be_visible()
    _shot(page, "02-results-en")
    # 2. Chinese, in the same box
    _search(page, QUERY_ZH)
    expect(page.locator("#chips select[name=c0_site]")).to_have_value("left upper lobe")
    _shot(page, "03-results-zh")
    # the "why" of a result opens from the keyboard
    page.locator(".card .why summary").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".card .why table.components").first).to_be_visible()

    # 3. open the first result: the study view at its key slice
    link = page.locator(".card a.imgs").first
    href = link.get_attribute("href")
    key = int(href.split("slice=")[1].split("&")[0])
    link.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_function(SLICE_LOADED)
    expect(page.locator("#slice-no")).to_have_text(str(key))
    if "region=" in href:
        expect(page.locator("svg.region")).to_be_visible()
    _shot(page, "04-study-key-slice")
    depth = int(page.locator("#viewer").get_attribute("data-depth"))
    step = 3 if key + 3 < depth else -3
    for _ in range(3):
        page.keyboard.press("ArrowRight" if step > 0 else "ArrowLeft")
    expect(page.locator("#slice-no")).to_have_text(str(key + step))
    page.keyboard.press("m")
    expect(page.locator("#slice")).to_have_attribute("src", __import__("re").compile(r"window=mediastinum$"))
    page.wait_for_function(SLICE_LOADED)
    _shot(page, "05-study-mediastinal-window")
    study_url = page.url

    # 4. more like this
    page.locator("#more-like").click()
    expect(page.locator("#results-title")).to_contain_text("Studies like")
    page.goto(study_url)

    # 5. break glass with a reason, from the keyboard
    page.locator("#breakglass summary").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#reason")).to_be_focused()
    page.keyboard.type(REASON)
    _shot(page, "06-break-glass")
    page.locator("#breakglass-go").focus()
    with page.expect_navigation(url=viewer.url + "/**"):
        page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("PACS viewer")
    opened = [p for p in viewer.opened if p.startswith("/viewer?")][-1]
    originals = {(label["study_uid"], label["accession_number"]) for label in labels}
    uid = opened.split("StudyInstanceUID=")[1].split("&")[0]
    accession = opened.split("acc=")[1]
    assert (uid, accession) in originals, "the viewer must get the study's original identifiers"
    assert [u for u in external if not u.startswith(viewer.url)] == [], "the page loaded something from outside"
    ctx.close()


def test_compliance_sees_the_flow_in_chinese_then_english(browser, live, world):
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 1000})
    ctx.set_default_timeout(20_000)
    page = ctx.new_page()
    _login_with_keyboard(page, live, "compliance")
    expect(page).to_have_url(live + "/audit")
    expect(page.locator("h1")).to_have_text("审计")
    row = page.locator("#reids tbody tr").filter(has_text=REASON)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("radiologist")
    expect(page.locator("#events")).to_contain_text(QUERY_ZH)  # the search, as typed
    page.locator("#verify").click()
    expect(page.locator("#verify-result")).to_contain_text("哈希链完整")
    _shot(page, "07-audit-zh")
    page.locator("#lang-switch").click()
    expect(page.locator("h1")).to_have_text("Audit")
    page.locator("input[name=user]").fill("radiologist")
    page.keyboard.press("Enter")
    page.locator("#report-btn").click()
    expect(page.locator("#report")).to_contain_text(REASON)
    _shot(page, "08-audit-en-report")
    ctx.close()
