"""A wheel that carries its web page: overnight built and installed the way a user gets it.

The command center's front-end files (htmx, xterm.js) are committed in
overnight/web/static/vendor/, each pinned and credited in THIRD_PARTY.toml there. Here: that
they are the pinned files, and that a wheel built from a clean copy of the checkout (tracked
files only), installed into a fresh virtualenv, serves the whole page to headless Chromium.

The fresh virtualenv installs offline from build/wheelhouse: the wheels of the versions this
venv has, of every distribution an install of overnight pulls in, and of the build backend.
The first run downloads them (about 50 wheels, 80 MB); later runs only add what changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from playwright.sync_api import sync_playwright

from overnight.sessions import wait_until
from overnight.web.app import VENDOR_FILES
from tests.helpers import REPO
from tests.helpers.labs import TOY_SCRIPT, make_lab
from tests.helpers.processes import start
from tests.helpers.web import ARGS, CHROMIUM

ROOT = REPO
VENDOR = ROOT / "overnight" / "web" / "static" / "vendor"
WHEELHOUSE = ROOT / "build" / "wheelhouse"
# what each license the front-end files may come under says, in its own words
LICENSE_WORDS = {
    "MIT": "Permission is hereby granted, free of charge, to any person obtaining a copy",
    "0BSD": "Permission to use, copy, modify, and/or distribute this software for any purpose "
    "with or without fee is hereby granted.",
}


def third_party() -> list[dict[str, Any]]:
    """The packages THIRD_PARTY.toml credits."""
    return list(tomllib.loads((VENDOR / "THIRD_PARTY.toml").read_text())["package"])


def shipped_files() -> dict[str, str]:
    """Each front-end file's name and its pinned sha256."""
    return {str(f["name"]): str(f["sha256"]) for package in third_party() for f in package["files"]}


# -- the committed files are the pinned ones -------------------------------------------------


def test_the_front_end_files_are_the_pinned_ones() -> None:
    for name, sha256 in shipped_files().items():
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert digest == sha256, f"{name}: sha256 {digest}, THIRD_PARTY.toml says {sha256}"
    # what `make web-assets` fetches is what THIRD_PARTY.toml credits
    makefile = (ROOT / "Makefile").read_text()
    pins = re.search(r"^WEB_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert pins is not None
    assert sorted(pins[1].split()) == sorted(f"{p['name']}@{p['version']}" for p in third_party())


def test_every_front_end_file_is_credited_and_nothing_else_is_committed_beside_them() -> None:
    licenses = {str(p["license_file"]) for p in third_party()}
    for package in third_party():
        text = " ".join((VENDOR / package["license_file"]).read_text().split())
        assert LICENSE_WORDS[package["license"]] in text, package["name"]
    # (what is committed: a checkout may still hold the old `make web-assets`'s `.installed`)
    committed = subprocess.run(
        ["git", "ls-files", "."], cwd=VENDOR, capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(committed) == {*shipped_files(), *licenses, "THIRD_PARTY.toml"}
    assert set(VENDOR_FILES) == set(shipped_files())
    # every license shipped is in the wheel's license expression
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {str(p["license"]) for p in third_party()} <= set(project["license"].split(" AND "))


def test_the_pages_load_only_shipped_front_end_files() -> None:
    templates = (ROOT / "overnight" / "web" / "templates").glob("*.html")
    loaded = {m for t in templates for m in re.findall(r"/static/vendor/([\w.-]+)", t.read_text())}
    assert loaded == set(VENDOR_FILES)


# -- a wheel from a clean checkout, in a fresh virtualenv, in a real browser ------------------


def clean_copy(dest: Path) -> Path:
    """The checkout's tracked files as they are in the work tree (uncommitted edits included,
    untracked and ignored files left out), as a fresh clone would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():  # (a tracked file deleted in the work tree is not copied)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(source.read_bytes())
            (dest / rel).chmod(source.stat().st_mode)
    return dest


def installed_pins(requirements: list[str]) -> dict[str, str]:
    """What installing `requirements` pulls in, at the versions this venv has."""
    pins: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    todo = [(Requirement(r), frozenset({""})) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in parent_extras):
            continue
        name = canonicalize_name(req.name)
        dist = metadata.distribution(name)
        pins[name] = dist.version
        for extra in {"", *req.extras}:
            if (name, extra) not in seen:
                seen.add((name, extra))
                todo += [(Requirement(r), frozenset({extra})) for r in dist.requires or ()]
    return pins


def wheelhouse(source: Path) -> Path:
    """build/wheelhouse, with a wheel for each dependency (at this venv's version) and for
    the build backend; only what is missing is downloaded."""
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    have = [parse_wheel_filename(w.name)[:2] for w in WHEELHOUSE.glob("*.whl")]
    wanted = [f"{n}=={v}" for n, v in installed_pins(pyproject["project"]["dependencies"]).items()]
    wanted += pyproject["build-system"]["requires"]
    missing = []
    for spec in map(Requirement, wanted):
        name, versions = canonicalize_name(spec.name), SpecifierSet(str(spec.specifier))
        if not any(n == name and versions.contains(v) for n, v in have):
            missing.append(str(spec))
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:",
             "-d", str(WHEELHOUSE), *missing],
            check=True, timeout=600,
        )  # fmt: skip
    return WHEELHOUSE


def a_user_s_env(home: Path) -> dict[str, str]:
    """This process's environment without what would let the checkout's code leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != bin_dir)
    env["HOME"] = str(home)
    env["PYTHONFAULTHANDLER"] = "1"  # a SIGABRT (see `served`) logs where every thread is
    return env


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A wheel built from a clean copy of the checkout, installed into a fresh virtualenv,
    serving a tiny lab with `overnight up`: (the page's URL, the wheel). Stopped at the end,
    pass or fail."""
    started = time.monotonic()
    source = clean_copy(tmp_path / "source")
    house = wheelhouse(source)
    fetched = time.monotonic()
    (tmp_path / "home").mkdir()
    env = a_user_s_env(tmp_path / "home")
    offline = ["--no-index", "--find-links", str(house)]
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    dist = tmp_path / "dist"

    def run(*cmd: str | Path) -> None:
        subprocess.run(list(map(str, cmd)), cwd=tmp_path, env=env, check=True, timeout=600)

    # what `pip install .` does: an isolated build with the backend pyproject.toml names
    run(*pip, "wheel", *offline, "--no-deps", "-w", dist, source)
    (wheel,) = dist.glob("overnight-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    # (no bytecode: compiling every dependency would double the test's time, and prove nothing)
    run(*pip, "--python", venv / "bin" / "python", "install", "--no-compile", *offline, wheel)
    installed = time.monotonic()
    found = subprocess.run(
        [venv / "bin" / "python", "-c", "import overnight; print(overnight.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(found).is_relative_to(venv), found  # the wheel's code, not the checkout's

    # the trials run in overnight's sandbox, whose /tmp is private: an interpreter under this
    # test's /tmp would not be found there, so they run with this venv's python
    lab = make_lab(tmp_path / "lab", script="import time\ntime.sleep(1)\n" + TOY_SCRIPT)
    log = (tmp_path / "up.log").open("w")
    proc = start(  # (a process group of its own: the kill below takes its trials too)
        [venv / "bin" / "overnight", "up", lab],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url_file = lab / ".overnight" / "web.url"
        wait_until(lambda: url_file.is_file() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, (tmp_path / "up.log").read_text()
        print(
            f"wheelhouse {fetched - started:.1f}s, build+install {installed - fetched:.1f}s, "
            f"up {time.monotonic() - installed:.1f}s"
        )
        yield url_file.read_text().strip(), wheel
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # it dies saying where it is stuck (the log)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "up.log").read_text()


def test_a_wheel_from_a_clean_checkout_serves_the_whole_page(served: tuple[str, Path]) -> None:
    url, wheel = served
    if not CHROMIUM.is_file():
        pytest.fail("Debian's chromium is missing: run `make system-deps`", pytrace=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page()
            answers: dict[str, int] = {}
            errors: list[str] = []
            page.on("response", lambda r: answers.update({r.url.split("/static/")[-1]: r.status}))
            page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)  # until "load": every script has run, or failed to load
            vendor = {name: answers.get(f"vendor/{name}") for name in VENDOR_FILES}
            assert vendor == dict.fromkeys(VENDOR_FILES, 200), vendor
            loaded = page.evaluate(
                "() => [typeof window.htmx, typeof window.Terminal, typeof window.FitAddon?.FitAddon]"
            )
            assert loaded == ["object", "function", "function"]
            # live: htmx and app.js at work, the event stream connected
            page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
        finally:
            browser.close()
    assert all(status < 400 for status in answers.values()), answers
    assert not errors, errors

    # ... and the wheel credits what it ships, its licenses also where tools look for them
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "overnight/web/static/vendor/THIRD_PARTY.toml" in names
    for package in third_party():
        license_file = f"overnight/web/static/vendor/{package['license_file']}"
        assert license_file in names
        assert f"overnight-0.1.0.dist-info/licenses/{license_file}" in names
