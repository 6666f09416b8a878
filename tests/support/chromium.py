"""A page rendered in a real headless Chromium (Debian's, which .ci/run installs), with what it complained of."""

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the flags this machine needs (no network beyond the loopback; running as root)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@contextmanager
def rendered(path: Path, width: int = 1400, height: int = 900) -> Iterator[tuple[object, list[str]]]:
    """``(page, problems)`` for the file ``path`` opened in headless Chromium; ``problems`` collects console
    errors and warnings, page errors and failed requests as they happen."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(path.as_uri())
            yield page, problems
        finally:
            browser.close()
