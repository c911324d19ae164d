"""Open the workflow's HTML report (results/report.html, `snakemake --report`) in headless Chromium and list what it
shows: the result entries by category, the tables and the images, with a screenshot of the page.

    python -m conspo.report results/report.html --screenshot results/report.png

Chromium and chromedriver are the Debian packages `chromium` and `chromium-driver` (/usr/bin/chromium,
/usr/bin/chromedriver); selenium is in the dev extra.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def _driver(profile_dir: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _wait_for(driver, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def inspect_report(report: str, screenshot: str, open_entries: tuple[str, ...] = ()) -> dict:
    """What the report shows: its visible text, its embedded result files (name -> MIME type) and, for each name in
    `open_entries`, what opening it displays (tables: the number of <table> elements and their text; images: the
    size Chromium decodes it to; every entry its caption). Saves a screenshot of the front page at `screenshot`."""
    with tempfile.TemporaryDirectory(prefix="conspo-chromium-") as profile:
        driver = _driver(profile)
        try:
            driver.get(Path(report).resolve().as_uri())
            _wait_for(driver, "return document.body && document.body.innerText.length > 0")
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(screenshot)
            text = driver.execute_script("return document.body.innerText")
            results = driver.execute_script(
                "const r = (typeof results !== 'undefined') ? results : {};"
                "return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.mime_type]));")
            opened = {name: _open_entry(driver, name) for name in open_entries}
        finally:
            driver.quit()
    return {"text": text, "results": results, "opened": opened}


def _open_entry(driver, name: str) -> dict:
    """Decode one embedded result the way the report displays it and describe its content: every entry its caption
    (as text); HTML its number of tables, its text and its hover texts; an image the size Chromium decodes it to."""
    driver.set_script_timeout(30)
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const entry = Object.entries(results).find(([k, v]) => k.endsWith(arguments[0]));
        if (!entry) { done({found: false}); return; }
        const [path, result] = entry;
        const data = result.data_uri;
        const caption = new DOMParser().parseFromString(result.caption || '', 'text/html').body.textContent.trim();
        const described = {found: true, path: path, mime: result.mime_type, caption: caption, bytes: data.length};
        if (result.mime_type === 'text/html') {
            const html = atob(data.split(',')[1]);
            const doc = new DOMParser().parseFromString(new TextDecoder().decode(
                Uint8Array.from(html, c => c.charCodeAt(0))), 'text/html');
            done(Object.assign(described, {tables: doc.querySelectorAll('table').length,
                                           text: doc.body.innerText || doc.body.textContent,
                                           hover: Array.from(doc.querySelectorAll('[title]'), e => e.title)}));
        } else if (result.mime_type.startsWith('image/')) {
            const image = new Image();
            image.onload = () => done(Object.assign(described, {width: image.naturalWidth,
                                                                height: image.naturalHeight}));
            image.onerror = () => done(Object.assign(described, {width: 0, height: 0}));
            image.src = data;
        } else {
            done(described);
        }
        """, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report")
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--open", nargs="*", default=[], help="result files to open (name suffixes)")
    args = parser.parse_args(argv)
    seen = inspect_report(args.report, args.screenshot, tuple(args.open))
    print(json.dumps({"results": seen["results"], "opened": seen["opened"]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
