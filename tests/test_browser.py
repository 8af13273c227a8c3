"""The dashboard in a real browser (headless Chromium driven by selenium).

Screenshots of the pages go to test-artifacts/ (git-ignored) for a human to
look at. Skipped, with the reason, where Chromium, its driver or selenium is
missing (.ci/run installs them).
"""
import shutil
from pathlib import Path

import pytest

from conftest import JOB_TIMEOUT, REPO, WORD_COUNT, wait_until, write_files
from support.programs import script

pytestmark = pytest.mark.timeout(180)

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1100,800"]
SMALL_INPUT = {f"part-{n}": b"the quick brown fox jumps over the lazy dog\n" * (n + 1)
               for n in range(6)}
PAGE_TIMEOUT = 30


def missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (.ci/run installs it)"
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian: chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path):
    reason = missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name):
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / name))


def text_of(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def job_row(driver, job_id):
    """(state, phase, progress) in the index page's row for the job, or Nones."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    try:
        for row in driver.find_elements(By.CSS_SELECTOR, "table tr"):
            cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            if cells and cells[0] == f"job {job_id}":
                return cells[1], cells[2], cells[3]
    except WebDriverException:  # the page reloaded under us: ask again
        pass
    return None, None, None


def test_a_running_job_advances_and_its_timeline_shows_each_attempt(dashboard, browser,
                                                                     tmp_path):
    from selenium.webdriver.common.by import By
    workers = dashboard.start_workers(2)
    mapper = script(tmp_path / "slow.sh", f"sleep 1\nexec {WORD_COUNT[0]}\n")
    inputs = write_files(tmp_path / "in", SMALL_INPUT)
    client = dashboard.send_job_async("--input", inputs, "--output", tmp_path / "out",
                                      "--mapper", mapper, "--mappers", 6, "--wait")
    try:
        base = f"http://localhost:{dashboard.http_port}"
        browser.get(f"{base}/")
        seen = set()

        def advancing():  # the page reloads itself every 2 s while the job runs
            state, phase, done = job_row(browser, 0)
            if state == "running" and phase == "map" and done:
                seen.add(done)
            return len(seen) >= 2 or state == "succeeded"
        wait_until(advancing, JOB_TIMEOUT, what="the page to show the job advancing")
        assert seen, "the running job was shown"
        screenshot(browser, "cluster-running.png")
        assert client.wait(JOB_TIMEOUT) == 0
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate()
    browser.get(f"{base}/jobs/0")
    bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.attempt")
    maps = [b for b in bars if "map" in b.get_attribute("class").split()]
    assert len(maps) == 6 and len(bars) >= 6 + 2
    assert {int(b.get_attribute("data-worker")) for b in bars} == {w.pid for w in workers}
    screenshot(browser, "job-timeline.png")


def test_a_failed_jobs_page_shows_the_cause_and_its_stderr_opens(dashboard, browser, tmp_path):
    from selenium.webdriver.common.by import By
    dashboard.start_worker()
    mapper = script(tmp_path / "failing.sh",
                    "cat >/dev/null\necho 'cannot parse record 7' >&2\nexit 3\n")
    inputs = write_files(tmp_path / "in", {"only": b"x\n"})
    result = dashboard.send_job("--input", inputs, "--output", tmp_path / "out", "--mapper",
                                mapper, "--mappers", 1, "--max-attempts", 1, "--wait")
    assert result.returncode == 1
    browser.get(f"http://localhost:{dashboard.http_port}/jobs/0")
    assert "Probable cause of failure" in text_of(browser)
    screenshot(browser, "job-failed.png")
    browser.find_element(By.CSS_SELECTOR, "a.log").click()
    wait_until(lambda: "cannot parse record 7" in text_of(browser), PAGE_TIMEOUT,
               what="the stderr log to open")
    assert Path(browser.current_url).name.endswith(".log")
