"""The web page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium):
upload a real crop, see the model's reading, its per-character probabilities and the attention map.
Skipped where no browser is installed, a failure under CI=true (.ci/run installs one)."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")

import clip4str  # noqa: E402
from clip4str.serve import ServeSettings, create_app  # noqa: E402
from clip4str.serve.server import BackgroundServer  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1200,900",
]


def _missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} (CI=true: .ci/run installs chromium, chromium-driver and selenium)")
    pytest.skip(what)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_reads_an_uploaded_real_crop(browser, golden_dir, realdata_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    reader = clip4str.load(golden_dir / "clip4str_tiny.ckpt")
    crop = realdata_dir / "clip4str_test_image" / "image_1576.jpeg"  # "Chicken", the official README crop
    expected = reader.read(crop)[0]
    assert expected.text  # the tiny model reads something there: the page must show exactly that
    with BackgroundServer(create_app(reader, "golden-tiny", ServeSettings(max_wait_ms=1))) as server:
        browser.get(server.url + "/")
        assert browser.find_element(By.ID, "model-name").text == "golden-tiny"
        assert "golden-tiny" in browser.title
        browser.find_element(By.ID, "file-input").send_keys(str(crop))
        card = WebDriverWait(browser, 20).until(
            lambda d: next(
                (
                    c
                    for c in d.find_elements(By.CSS_SELECTOR, ".result")
                    if c.get_attribute("data-state") != "pending"
                ),
                False,
            )
        )
        assert card.get_attribute("data-state") == "done", card.find_element(By.CSS_SELECTOR, ".error").text
        assert card.find_element(By.CSS_SELECTOR, ".name").text == crop.name
        assert card.find_element(By.CSS_SELECTOR, ".text").text == expected.text
        assert (
            card.find_element(By.CSS_SELECTOR, ".confidence").text == f"confidence {expected.confidence:.4f}"
        )
        chips = card.find_elements(By.CSS_SELECTOR, ".char")
        assert len(chips) == len(expected.text) + 1  # one per character, then the end token
        assert [c.find_element(By.TAG_NAME, "small").text for c in chips] == [
            f"{p:.3f}" for p in expected.char_probs
        ]
        attention = card.find_element(By.CSS_SELECTOR, "img.attention")
        assert attention.is_displayed()
        assert browser.execute_script("return arguments[0].naturalWidth", attention) > 100
        # Everything the page loaded came from the service itself (no CDN).
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith((server.url, "data:", "blob:")) for u in loaded), loaded
