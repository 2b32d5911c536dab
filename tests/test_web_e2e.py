"""The inbox in a real browser: headless Chromium (Debian's, through its chromedriver) against
``agentfsm serve`` and ``agentfsm worker`` running as processes on one SQLite store.

A run started through the API pauses and appears in the open inbox without a reload; the
model's markup in its arguments is shown as text and never runs; a person edits the
arguments on the run's page and approves, and the page shows the run completing, live.

With AGENTFSM_SCREENSHOT set, the test saves the inbox as docs/img/inbox.png.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.apps.inbox_app import PAYLOAD
from tests.fleet import ROOT, spawn

pytest.importorskip("starlette", reason="the inbox needs the web extra")
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev group)")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
APP = "tests.apps.inbox_app:agent"
TOKEN = "e2e-token-for-ada-0123456789"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver; .ci/run installs them when it can)",
)


def _first_line(process: subprocess.Popen[str], seconds: float) -> str:
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], seconds)
    if not ready:
        process.kill()
        raise AssertionError(f"no output within {seconds} s: {process.communicate()}")
    return process.stdout.readline()


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The inbox on a free loopback port, and the environment of its store."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who  token\nada {TOKEN}\n")
    env = {"AGENTFSM_STORE": str(tmp_path / "runs.db")}
    serve = spawn(
        ["serve", "--app", APP, "--port", "0", "--tokens", str(tokens), "--poll", "0.1"], env
    )
    try:
        line = _first_line(serve, 30)
        assert line.startswith("agentfsm inbox at http://127.0.0.1:"), line
        yield line.split(" at ", 1)[1].strip().rstrip("/"), env
    finally:
        _stop(serve)


@pytest.fixture
def browser() -> Iterator[object]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="agentfsm-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--window-size=1200,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver: object, condition: object, what: str, seconds: float = 20) -> object:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {seconds} s waiting for {what}") from None


def _text(driver: object, selector: str) -> str:
    """The text of the first element matching ``selector`` now ("" if none): read in one
    script, so that a live update replacing the element cannot make it stale meanwhile."""
    script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
    return str(driver.execute_script(script, selector))  # type: ignore[attr-defined]


def _worker(env: dict[str, str]) -> subprocess.Popen[str]:
    worker = spawn(["worker", "--app", APP, "--poll", "0.1"], env)
    assert _first_line(worker, 30).startswith("worker "), "the worker did not start"
    return worker


def test_a_person_decides_a_paused_run_in_the_browser(
    served: tuple[str, dict[str, str]], browser: object
) -> None:
    from selenium.webdriver.common.by import By

    base, env = served
    driver: object = browser
    driver.get(f"{base}/")  # type: ignore[attr-defined]
    assert "/login" in driver.current_url  # type: ignore[attr-defined]
    driver.find_element(By.NAME, "token").send_keys(TOKEN)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "form.login button").click()  # type: ignore[attr-defined]
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "p.empty"), "the empty inbox")
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.live") == "open",
        "the inbox's event stream",
    )
    # A mark on this page: a reload would lose it.
    driver.execute_script("window.__sameInboxPage = true")  # type: ignore[attr-defined]

    worker = _worker(env)
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=base, headers=auth, trust_env=False) as api:
            started = api.post("/api/runs", json={"input": "Pay the invoice of Café Ōsaka"})
        assert started.status_code == 201, started.text
        run_id = started.json()["run_id"]
        card = _wait(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, "article.call"),
            "the paused run's call to appear in the inbox",
        )[0]  # type: ignore[index]
    finally:
        _stop(worker)
    assert driver.execute_script("return window.__sameInboxPage") is True  # type: ignore[attr-defined]

    # The model's markup is text on the page, and none of it ran.
    shown = card.find_element(By.CSS_SELECTOR, "pre.arguments").text
    assert "<script>window.__xss = 1</script>" in shown
    assert "Zahlung für Café Ōsaka, 東京 ✓" in shown
    assert driver.execute_script("return window.__xss") is None  # type: ignore[attr-defined]
    assert not card.find_elements(By.CSS_SELECTOR, "pre.arguments script, pre.arguments img")
    assert "Pay a supplier" in card.text  # the tool's description, from --app
    assert "I am paying it now" in card.text  # what the agent said before it asked
    if os.environ.get("AGENTFSM_SCREENSHOT"):
        card.find_element(By.XPATH, ".//summary[contains(., 'Edit, then approve')]").click()
        driver.set_window_size(1200, 1280)  # type: ignore[attr-defined]
        (ROOT / "docs" / "img").mkdir(exist_ok=True)
        driver.save_screenshot(str(ROOT / "docs" / "img" / "inbox.png"))  # type: ignore[attr-defined]

    # On the run's page: edit the arguments, approve, and watch the run complete.
    card.find_element(By.LINK_TEXT, run_id).click()
    _wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "article.call details"), "the run page"
    )
    driver.find_element(By.XPATH, "//summary[contains(., 'Edit, then approve')]").click()  # type: ignore[attr-defined]
    amount = driver.find_element(By.NAME, "arg.amount")  # type: ignore[attr-defined]
    assert amount.get_attribute("type") == "number" and amount.get_attribute("value") == "125000"
    amount.clear()
    amount.send_keys("120000")
    note = driver.find_element(By.NAME, "arg.note")  # type: ignore[attr-defined]
    assert note.get_attribute("value") == PAYLOAD
    note.clear()
    note.send_keys("Invoice 42, Café Ōsaka")
    driver.find_element(By.CSS_SELECTOR, "form.edit button.approve").click()  # type: ignore[attr-defined]
    _wait(
        driver,
        lambda d: "approved with edits by ada" in _text(d, "main"),
        "the posted decision on the run page",
    )
    assert _text(driver, "span.status") == "interrupted"
    driver.execute_script("window.__sameRunPage = true")  # type: ignore[attr-defined]
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.live") == "open",
        "the run's event stream",
    )

    worker = _worker(env)
    try:
        _wait(
            driver,
            lambda d: _text(d, "span.status") == "completed",
            "the run to complete on its page",
        )
    finally:
        _stop(worker)
    assert driver.execute_script("return window.__sameRunPage") is True  # type: ignore[attr-defined]
    main = _text(driver, "main")
    assert "paid 120000 to DE89370400440532013000" in main
    assert "ada" in main and "approved with edits" in main  # the audit trail
    assert driver.execute_script("return window.__xss") is None  # type: ignore[attr-defined]
