"""``astrogan serve`` in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``)
driven by Selenium, against a real server process. Without them these tests skip with one line that
says how to install them, unless ASTROGAN_REQUIRE_BROWSER=1 (CI): then a missing browser fails.
ASTROGAN_SCREENSHOT=docs/images/serve.png also saves the README's screenshot (a real Hubble image)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.imageio import read_meta
from tests.servekit import HUBBLE, ROOT, Server, ab_of, grey16, guided_checkpoint, hex_rgb, png_info

pytestmark = pytest.mark.slow
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
INSTALL = ("browser tests need headless Chromium and Selenium: apt-get install chromium chromium-driver && "
           "pip install -r requirements.txt")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1400,1000", "--disable-dev-shm-usage")
COLOURS = ("#c05050", "#5060c0")


def _missing() -> str | None:
    for path in (CHROMIUM, DRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    return None


@pytest.fixture(scope="module")
def browser():
    problem = _missing()
    if problem:
        if os.environ.get("ASTROGAN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ASTROGAN_REQUIRE_BROWSER=1 but {problem}; {INSTALL}")
        pytest.skip(f"{problem}; {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="astrogan-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    folder = tmp / "folder"
    folder.mkdir()
    shutil.copy(HUBBLE, folder / HUBBLE.name)
    (tmp / "secret.png").write_bytes(HUBBLE.read_bytes())
    model = guided_checkpoint(tmp / "guided.pt")
    srv = Server([str(folder), "--colorize-model", str(model), "--max-pixels", "500000"], tmp / "tmp")
    yield srv, tmp
    srv.stop()


def _wait(driver, condition, timeout=120, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(condition)
        if value:
            return value
        time.sleep(0.1)
    error = driver.execute_script("return document.getElementById('error').textContent")
    raise AssertionError(f"timed out waiting for {what}; the page's error: {error!r}")


def _version(driver) -> int:
    return int(driver.execute_script("return document.getElementById('after').dataset.version || 0"))


def _preview_after(driver, version: int) -> None:
    _wait(driver, f"return Number(document.getElementById('after').dataset.version || 0) > {version} && "
                  "document.body.dataset.busy === '0'", what="the preview")


def _click(driver, fx: float, fy: float, colour: str) -> None:
    """Pick ``colour`` in the page's colour input and click the image at fractions (fx, fy) of its size."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver.execute_script("const c = document.getElementById('colour'); c.value = arguments[0];"
                          "c.dispatchEvent(new Event('input'));", colour)
    img = driver.find_element("id", "after")
    w, h = img.size["width"], img.size["height"]
    dx, dy = int((fx - 0.5) * w), int((fy - 0.5) * h)  # Selenium 4: offsets from the element's centre
    ActionChains(driver).move_to_element_with_offset(img, dx, dy).click().perform()


def _pixels(driver, points: list[dict]) -> list[list[list[int]]]:
    """The preview's RGB in a 5x5 px window around each image-pixel point (read back from the page)."""
    return driver.execute_script("""
        const img = document.getElementById('after');
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d');
        ctx.drawImage(img, 0, 0);
        const [W, H] = [state.image.width, state.image.height];
        return arguments[0].map((p) => {
          const x = Math.round((p.x + 0.5) * c.width / W - 0.5);
          const y = Math.round((p.y + 0.5) * c.height / H - 0.5);
          const d = ctx.getImageData(x - 2, y - 2, 5, 5).data, out = [];
          for (let i = 0; i < d.length; i += 4) out.push([d[i], d[i + 1], d[i + 2]]);
          return out;
        });""", points)


def _upload(driver, srv, path: Path) -> None:
    driver.get(srv.url + "/")
    _wait(driver, "return document.getElementById('stretch').options.length > 1", what="the config")
    version = _version(driver)
    driver.find_element("id", "file").send_keys(str(path))
    _preview_after(driver, version)


def _job(driver, srv, button: str, kind: str) -> bytes:
    driver.find_element("id", button).click()
    href = _wait(driver, "const a = document.getElementById('download');"
                         f"return !a.hidden && a.dataset.kind === '{kind}' && a.getAttribute('href');",
                 timeout=300, what=f"the {kind} download")
    status, _, body = srv.request("GET", href)
    assert status == 200
    return body


def test_click_two_hints_download_and_upscale(browser, served):
    srv, tmp = served
    driver = browser
    _upload(driver, srv, grey16(tmp / "grey16.png", 120, 160))
    assert "160×120, grey, 16-bit" in driver.find_element("id", "image-info").text
    for (fx, fy), colour in zip(((0.2, 0.25), (0.8, 0.75)), COLOURS, strict=True):
        version = _version(driver)
        _click(driver, fx, fy, colour)
        _preview_after(driver, version)
    hints = driver.execute_script("return state.hints")
    assert [h["color"] for h in hints] == list(COLOURS)
    assert driver.execute_script("return document.getElementById('after').dataset.hints") == "2"
    for hint, window in zip(hints, _pixels(driver, hints), strict=True):
        got = np.median(ab_of(np.array(window)), axis=0)
        assert np.abs(got - ab_of(hex_rgb(hint["color"]))).max() < 6, (hint, got)
    _drag_second_hint(driver)
    hints = driver.execute_script("return state.hints")
    png = _job(driver, srv, "download-colour", "colorize")
    assert png_info(png) == (160, 120, 16, 2)  # full resolution, 16-bit RGB for the 16-bit input
    (tmp / "download.png").write_bytes(png)
    meta = read_meta(tmp / "download.png")
    assert meta["hints"]["points"] == [[h["x"], h["y"], h["color"], 1] for h in hints]
    assert len(meta["model_sha256"]) == 64 and meta["strength"] == 1
    driver.find_element("id", "mode-upscale").click()
    png = _job(driver, srv, "run-upscale", "upscale")
    assert png_info(png)[:2] == (640, 480)
    _wait(driver, "return document.getElementById('after').naturalWidth === 640", what="the 4x image")
    shot = os.environ.get("ASTROGAN_SCREENSHOT")
    if shot:
        _screenshot(driver, srv, ROOT / shot)


def _drag_second_hint(driver) -> None:
    """Drag the second marker 20 px left and up: the hint moves and the preview follows."""
    from selenium.webdriver.common.action_chains import ActionChains

    before = driver.execute_script("return state.hints[1]")
    version = _version(driver)
    marker = driver.find_elements("css selector", ".marker")[1]
    drag = ActionChains(driver).click_and_hold(marker).move_by_offset(-10, -10).move_by_offset(-10, -10)
    drag.release().perform()
    _preview_after(driver, version)
    after = driver.execute_script("return state.hints[1]")
    assert after["x"] < before["x"] and after["y"] < before["y"] and after["color"] == before["color"]
    assert len(driver.find_elements("css selector", ".marker")) == 2


def _screenshot(driver, srv, dst: Path) -> None:
    """The README's picture: a real Hubble image opened from FOLDER, three hints, before/after at 22%."""
    from selenium.webdriver.support.ui import Select

    driver.get(srv.url + "/")
    _wait(driver, "return document.getElementById('folder-files').options.length > 0", what="the folder list")
    Select(driver.find_element("id", "folder-files")).select_by_value(HUBBLE.name)
    version = _version(driver)
    driver.find_element("id", "open-path").click()
    _preview_after(driver, version)
    for (fx, fy), colour in zip(((0.3, 0.3), (0.75, 0.6), (0.2, 0.8)), ("#c05050", "#5060c0", "#50a070"),
                                strict=True):
        version = _version(driver)
        _click(driver, fx, fy, colour)
        _preview_after(driver, version)
    driver.execute_script("const c = document.getElementById('compare'); c.value = 22;"
                          "c.dispatchEvent(new Event('input'));")
    dst.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(dst))


def _page_error(driver, action) -> str:
    driver.execute_script("document.getElementById('error').hidden = true")
    action()
    return _wait(driver, "const e = document.getElementById('error');"
                         "return !e.hidden && e.textContent", what="the page's error")


def test_bad_inputs_and_path_traversal_show_the_page_error(browser, served):
    srv, tmp = served
    driver = browser
    (tmp / "notes.png").write_text("not a picture")
    big = tmp / "big.png"
    grey16(big, 800, 800)
    _upload(driver, srv, grey16(tmp / "small.png", 60, 80))
    file_input = driver.find_element("id", "file")
    assert "notes.png: not a recognised image" in _page_error(driver, lambda: file_input.send_keys(
        str(tmp / "notes.png")))
    assert "exceeds --max-pixels" in _page_error(driver, lambda: file_input.send_keys(str(big)))
    grey_ref = grey16(tmp / "grey_ref.png", 30, 30)
    message = _page_error(driver, lambda: driver.find_element("id", "reference").send_keys(str(grey_ref)))
    assert "grey_ref.png" in message and "colour reference" in message
    # A path outside FOLDER smuggled into the page's folder list: refused, said in the page.
    driver.execute_script("document.getElementById('folder-files').add(new Option('../secret.png', "
                          "'../secret.png', true, true));"
                          "document.getElementById('folder-box').hidden = false;")
    message = _page_error(driver, lambda: driver.find_element("id", "open-path").click())
    assert "outside the folder" in message
    for error in (message,):
        assert error.count(". ") == 0 and "\n" not in error  # one sentence
    # The server still answers, and the page still works.
    assert srv.json("GET", "/api/config")[0] == 200
    version = _version(driver)
    driver.find_element("id", "file").send_keys(str(tmp / "small.png"))
    _preview_after(driver, version)


def test_tabs_strength_and_removing_hints(browser, served):
    srv, tmp = served
    driver = browser
    _upload(driver, srv, grey16(tmp / "first.png", 60, 80))
    first = driver.current_window_handle
    driver.switch_to.new_window("tab")
    _upload(driver, srv, grey16(tmp / "second.png", 40, 50))
    version = _version(driver)
    _click(driver, 0.5, 0.5, COLOURS[1])
    _preview_after(driver, version)
    driver.switch_to.window(first)  # the first tab's image is still open on the server
    version = _version(driver)
    _click(driver, 0.3, 0.3, COLOURS[0])
    _preview_after(driver, version)
    assert "80×60" in driver.find_element("id", "image-info").text
    grey_level = ("const img = document.getElementById('after'), c = document.createElement('canvas');"
                  "c.width = img.naturalWidth; c.height = img.naturalHeight; const x = c.getContext('2d');"
                  "x.drawImage(img, 0, 0); const d = x.getImageData(0, 0, c.width, c.height).data; let m = 0;"
                  "for (let i = 0; i < d.length; i += 4) m = Math.max(m, Math.abs(d[i] - d[i + 1]),"
                  " Math.abs(d[i + 2] - d[i + 1])); return m;")
    assert driver.execute_script(grey_level) > 20  # coloured
    version = _version(driver)
    driver.execute_script("const s = document.getElementById('strength'); s.value = 0;"
                          "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));")
    _preview_after(driver, version)
    assert driver.execute_script(grey_level) <= 1  # strength 0: grey
    version = _version(driver)
    driver.find_element("css selector", ".remove-hint").click()
    _preview_after(driver, version)
    assert driver.execute_script("return state.hints.length") == 0
    assert driver.find_elements("css selector", ".marker") == []
