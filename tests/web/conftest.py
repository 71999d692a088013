"""Fixtures of the command center's tests: its front-end files, and a browser and its
pages (tests/helpers/web.py has the lab served by `overnight up`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from overnight.web import missing_assets
from tests.helpers.web import ARGS, CHROMIUM, WebLab


@pytest.fixture
def front_end_files() -> None:
    """The pages need htmx and xterm.js from npm (`make test` installs them first)."""
    missing = missing_assets()
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: run `make web-assets`", pytrace=False)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is missing: run `make system-deps`", pytrace=False)
    with sync_playwright() as p:
        # launch() gives every browser a fresh, empty profile of its own
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


# Chromium tells of a Content-Security-Policy violation twice: a console error ("Applying
# inline style violates the following Content Security Policy directive ...") and a
# `securitypolicyviolation` event in the page, which this script (injected by the browser,
# so outside the policy) keeps.
# (`wait_for_function` is given functions, "() => ...": Playwright re-evaluates a bare
# expression with the page's own eval, which the page's policy refuses.)
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(
    `${e.effectiveDirective} refused ${e.blockedURI || "inline"}`
    + ` (${e.sourceFile}:${e.lineNumber})`));
"""


def csp_violations(page: Page) -> list[str]:
    return list(page.evaluate("window.__csp || []"))


@pytest.fixture
def page(browser: Browser, lab: WebLab) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.add_init_script(CSP_WATCH)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    p.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    p.on("dialog", lambda d: d.accept())  # "Restart X?" confirmations
    yield p
    if not p.is_closed() and p.url.startswith("http"):
        errors += csp_violations(p)
    context.close()
    assert not errors, errors  # no script error and no policy violation on any page
