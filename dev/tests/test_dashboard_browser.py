"""The dashboard in a real browser: Debian's chromium, headless, driven by selenium through
chromium-driver (dev/test.sh installs both), against a real RabbitMQ with a server of the
test's namespace running in this process. The browser is driven from a thread: the dashboard
serves from this test's event loop."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboards import NS, add, dashboard_at, flaky, outer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as when
from selenium.webdriver.support.ui import WebDriverWait
from servers import publish_probe

import atasks
from atasks.events import SERVER_ID
from atasks.transport.backends.amqp.dead import purge_dead_letters

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless chromium; quit after the test."""
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("no chromium or chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)  # --no-sandbox: CI runs as root
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def css(selector: str) -> tuple[str, str]:
    return (By.CSS_SELECTOR, selector)


def wait(driver: WebDriver, within: float, condition: object) -> object:
    return WebDriverWait(driver, within, poll_frequency=0.05).until(condition)  # type: ignore[arg-type]


async def test_the_page_shows_live_calls_and_replays_a_dead_letter(
    amqp_url: str, tmp_path: Path, browser: WebDriver
) -> None:
    await purge_dead_letters(amqp_url, NS)
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS, events=True)
    async with dashboard_at(amqp_url) as base:
        await asyncio.to_thread(browser.get, base + "/")
        assert browser.title == "atasks dashboard"
        # the page loads: this process is listed with its slots, the queues with theirs
        server_row = css(f'#servers tr[data-server="{SERVER_ID}"]')
        await asyncio.to_thread(wait, browser, 30, when.presence_of_element_located(server_row))
        cells = [c.text for c in browser.find_elements(*css(f"{server_row[1]} td"))]
        assert cells[2:6] == ["64", "0", "0", "0"]  # slots, running, parked, waiting
        queue_row = css(f'#queues tr[data-atask="{add.name}"] td')
        assert [c.text for c in browser.find_elements(*queue_row)][1:3] == [
            f"atasks.{NS}.{add.name}",
            "0",
        ]

        schedule = css('#schedules tr[data-schedule="nightly"]')
        await asyncio.to_thread(wait, browser, 30, when.presence_of_element_located(schedule))
        assert "T03:00:00+00:00" in browser.find_element(*schedule).text  # its next due time

        # live: the page follows the events once a probe event reaches it
        token = uuid.uuid4().hex
        probe = when.presence_of_element_located(css(f'li.call[data-atask="probe.{token}"]'))
        async with asyncio.timeout(30):
            while True:
                await publish_probe(amqp_url, token, NS)
                try:
                    await asyncio.to_thread(wait, browser, 0.5, probe)
                    break
                except Exception:  # not yet: publish another
                    continue

        # a call made now shows in the tree, its nested calls under it, within 5 s
        assert await outer(2) == 1
        done_at = time.monotonic()
        finished = css(f'li.call[data-atask="{outer.name}"][data-state="succeeded"]')
        nested = css(f'{finished[1]} li.call[data-atask="{add.name}"][data-state="succeeded"]')
        await asyncio.to_thread(
            wait, browser, 5, lambda d: len(d.find_elements(*nested)) == 2 and d
        )
        took = time.monotonic() - done_at
        print(f"call shown in the browser's tree {took:.2f}s after it returned")

        # a dead letter is listed; its replay button replays it, and the call then succeeds
        marker = tmp_path / "marker"
        await flaky(str(marker))
        row = css(f'#dead tr[data-atask="{flaky.name}"]')
        await asyncio.to_thread(wait, browser, 30, when.presence_of_element_located(row))
        assert "no " + str(marker) in browser.find_element(*row).text
        marker.write_text("")
        button = browser.find_element(By.CSS_SELECTOR, f"{row[1]} button.replay")
        await asyncio.to_thread(button.click)
        await asyncio.to_thread(wait, browser, 30, when.invisibility_of_element_located(row))
        async with asyncio.timeout(30):
            while not marker.with_suffix(".done").exists():
                await asyncio.sleep(0.05)
        succeeded = css(f'li.call[data-atask="{flaky.name}"][data-state="succeeded"]')
        await asyncio.to_thread(wait, browser, 10, when.presence_of_element_located(succeeded))
        count = when.text_to_be_present_in_element(css("#dead-count"), f"0 in atasks-dead.{NS}")
        await asyncio.to_thread(wait, browser, 10, count)
