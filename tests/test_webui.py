"""The web UI in headless Chromium (Debian ``chromium`` + ``chromium-driver``, driven by
selenium): log in with a token, see finished and failed jobs, follow a running job's log
live, download an output, re-run and remove a job, look at buckets, routing and the node.

Screenshots go to the test's directory; with ``HOPS_SCREENSHOTS=docs/screenshots`` they
also replace the ones the README shows."""
from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from dicom_helpers import MagickboxProcess, make_study, storescu
from test_api import FAIL_SCRIPT, OK_SCRIPT, SLOW_SCRIPT, Api
from test_jobs import process_bucket

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), \
        "headless Chromium is missing: deploy/local/install-deps.sh (Debian chromium chromium-driver)"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1250", "--lang=en-US", "--no-first-run"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def node(tmp_path):
    data = tmp_path / "node"
    for ae, script in (("ProcOK", OK_SCRIPT), ("ProcFail", FAIL_SCRIPT), ("ProcSlow", SLOW_SCRIPT)):
        process_bucket(data / "buckets", ae, script)
    (data / "routing.json").parent.mkdir(parents=True, exist_ok=True)
    (data / "routing.json").write_text(
        '// send what ProcOK makes to the PACS, fall back to the archive\n'
        '{"routing": [{"name": "ProcOK results to PACS", "AETitleIn": "ProcOK", "send": [\n'
        '  {"success": {"IP": "10.0.0.5", "PORT": "104", "AETitleSender": "HOPS", "AETitleTo": "PACS", "break": 1}},\n'
        '  {"success": {"IP": "10.0.0.6", "PORT": "104", "AETitleSender": "HOPS", "AETitleTo": "ARCHIVE"}}]}]}\n')
    node = MagickboxProcess(data, quiet_seconds=0.5, extra_args=["--node-name", "mri-lab"])
    node.start()
    yield node
    node.stop()


class Shots:
    def __init__(self, driver, tmp_path: Path):
        self.driver = driver
        self.dirs = [tmp_path / "screenshots"]
        if os.environ.get("HOPS_SCREENSHOTS"):
            self.dirs.append(Path(os.environ["HOPS_SCREENSHOTS"]))
        for d in self.dirs:
            d.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> None:
        path = self.dirs[0] / f"{name}.png"
        assert self.driver.save_screenshot(str(path))
        for d in self.dirs[1:]:
            shutil.copy(path, d / path.name)


def wait_for(predicate, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:           # element not there yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_web_ui_in_headless_chromium(node, browser, tmp_path):
    from selenium.webdriver.common.by import By
    shot = Shots(browser, tmp_path)
    api = Api(node, node.token)
    # a finished job (DICOM send), another one (upload), and a failed one
    storescu(node.dicom_port, "ProcOK", make_study(tmp_path / "dicom", 4), calling="PRISMA1")
    deadline = time.monotonic() + 30
    while not api.get("/api/jobs").json():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ok = api.wait_final(api.get("/api/jobs").json()[0]["id"])
    make_study(tmp_path / "b", 2)
    api.wait_final(api.push("ProcOK", tmp_path / "b", sender="alice:qa")["jobs"][0]["id"])
    make_study(tmp_path / "f", 2)
    failed = api.wait_final(api.push("ProcFail", tmp_path / "f", sender="alice:qa")["jobs"][0]["id"])
    assert ok["status"] == "success" and failed["status"] == "failed"

    # log in
    browser.get(node.url + "/")
    wait_for(lambda: "/ui/login" in browser.current_url, what="the login page")
    browser.find_element(By.ID, "token").send_keys("mbx_mistyped")
    browser.find_element(By.ID, "login").click()
    assert "not valid" in wait_for(lambda: browser.find_element(By.ID, "login-error").text)
    browser.find_element(By.ID, "token").send_keys(node.token)
    shot("login")
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: browser.current_url.endswith("/ui/jobs"), what="the jobs page")

    # the jobs list: coloured statuses, the failed job's message
    rows = {r.get_attribute("data-job"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr.row")}
    assert set(rows) == {str(ok["id"]), str(ok["id"] + 1), str(failed["id"])}
    assert rows[str(ok["id"])].find_element(By.CSS_SELECTOR, ".pill").text == "success"
    pill = rows[str(failed["id"])].find_element(By.CSS_SELECTOR, ".pill")
    assert pill.text == "failed" and "st-failed" in pill.get_attribute("class")
    assert pill.value_of_css_property("background-color") != \
        rows[str(ok["id"])].find_element(By.CSS_SELECTOR, ".pill").value_of_css_property("background-color")
    assert "no T1-weighted series found" in rows[str(failed["id"])].text
    assert "PRISMA1" in rows[str(ok["id"])].text and "CompressedSamples" not in browser.page_source
    shot("jobs")
    # filters
    browser.find_element(By.NAME, "q").send_keys("alice")
    browser.find_element(By.CSS_SELECTOR, "form.filters button.primary").click()
    wait_for(lambda: "q=alice" in browser.current_url)
    assert {r.get_attribute("data-job") for r in browser.find_elements(By.CSS_SELECTOR, "tr.row")} == \
        {str(ok["id"] + 1), str(failed["id"])}

    # a finished job: its log, details, and the output download
    browser.get(f"{node.url}/ui/jobs/{ok['id']}")
    log = wait_for(lambda: "second line" in browser.find_element(By.ID, "log").text
                   and browser.find_element(By.ID, "log").text, what="the log")
    assert log.startswith("start ")
    assert browser.find_element(By.ID, "log-state").text == "complete"
    assert "PRISMA1" in browser.page_source and "maps/t1.txt" in browser.page_source
    assert "No measures were recorded" in browser.find_element(By.ID, "measures").text
    shot("job")
    browser.find_element(By.ID, "download-output").click()
    target = browser.downloads / f"mri-lab-job{ok['id']}-output.zip"
    wait_for(target.exists, what="the downloaded zip")
    wait_for(lambda: not list(browser.downloads.glob("*.crdownload")), what="the download to finish")
    with zipfile.ZipFile(target) as zf:
        assert zf.read(f"mri-lab-job{ok['id']}-output/output/count.txt").strip() == b"4"

    # the failed job says why
    browser.get(f"{node.url}/ui/jobs/{failed['id']}")
    reason = browser.find_element(By.ID, "reason").text
    assert "Why it failed" in reason and "no T1-weighted series found" in reason
    wait_for(lambda: "looking for a T1 series" in browser.find_element(By.ID, "log").text)
    shot("failed-job")

    # a running job's log, live
    make_study(tmp_path / "slow", 1)
    slow = api.push("ProcSlow", tmp_path / "slow", sender="bob:study7")["jobs"][0]["id"]
    browser.get(f"{node.url}/ui/jobs/{slow}")
    wait_for(lambda: "waiting for release" in browser.find_element(By.ID, "log").text, what="the live log")
    wait_for(lambda: browser.find_element(By.ID, "status").text == "running", what="running")
    assert browser.find_element(By.ID, "log-state").text.startswith("live")
    shot("live-log")
    (node.data_dir / "buckets" / "procslow" / "memory" / "release").touch()
    wait_for(lambda: "released" in browser.find_element(By.ID, "log").text.split("waiting for release")[1],
             what="the new log line")
    # the page reloads itself when the job ends: status, buttons and files appear
    wait_for(lambda: browser.find_element(By.ID, "status").text == "success"
             and browser.find_elements(By.ID, "rerun"), timeout=30, what="the finished job page")

    # re-run, then remove (with the confirmation dialog)
    browser.find_element(By.ID, "rerun").click()
    wait_for(lambda: f"/ui/jobs/{slow + 1}" in browser.current_url, what="the new job")
    assert f"follows job {slow}" in browser.page_source.replace("<a href=\"/ui/jobs/%d\">" % slow, "")
    assert "was created to run ProcSlow again" in browser.page_source
    wait_for(lambda: browser.find_elements(By.ID, "remove"), timeout=30, what="the finished re-run")
    assert browser.find_element(By.ID, "status").text == "success"
    browser.find_element(By.ID, "remove").click()
    browser.switch_to.alert.dismiss()                                  # "no": nothing happens
    assert api.get(f"/api/jobs/{slow + 1}").status_code == 200
    browser.find_element(By.ID, "remove").click()
    browser.switch_to.alert.accept()
    wait_for(lambda: browser.current_url.endswith("/ui/jobs"))
    assert f"Job {slow + 1} was removed" in browser.page_source
    assert api.get(f"/api/jobs/{slow + 1}").status_code == 404

    # buckets, routing rules, node status
    browser.get(node.url + "/ui/buckets")
    assert "ProcSlow" in browser.page_source and f"port <b>{node.dicom_port}</b>" in browser.page_source
    shot("buckets")
    browser.get(node.url + "/ui/routing")
    assert "ProcOK results to PACS" in browser.find_element(By.ID, "rules").text
    text = browser.find_element(By.ID, "routing-text")
    text.clear()
    text.send_keys('{"routing": [{"name": "broken", "send": []}]}')
    browser.find_element(By.ID, "save-routing").click()
    error = wait_for(lambda: browser.find_element(By.ID, "routing-error").text, what="the routing error")
    assert error.startswith("Not saved: routing.json: rule 0"), error
    assert "ProcOK results to PACS" in (node.data_dir / "routing.json").read_text()    # not saved
    browser.get(node.url + "/ui/routing")
    shot("routing")
    browser.get(node.url + "/ui/status")
    assert "mri-lab" in browser.page_source and browser.find_element(By.ID, "queue").text
    shot("status")

    # log out: the pages want a token again
    browser.find_element(By.CSS_SELECTOR, "form.who button").click()
    wait_for(lambda: "/ui/login" in browser.current_url)
    browser.get(node.url + "/ui/jobs")
    assert "/ui/login" in browser.current_url


def test_read_only_token_sees_no_change_buttons(node, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from test_api import make_token
    api = Api(node, node.token)
    make_study(tmp_path / "s", 1)
    job = api.wait_final(api.push("ProcOK", tmp_path / "s")["jobs"][0]["id"])
    token = make_token(node.data_dir, "viewer", "read")
    browser.get(node.url + f"/ui/login?next=/ui/jobs/{job['id']}")
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait_for(lambda: browser.current_url.endswith(f"/ui/jobs/{job['id']}"))
    assert browser.find_elements(By.ID, "download-output")
    for button in ("rerun", "remove", "download-input", "save-routing"):
        assert not browser.find_elements(By.ID, button), button
    assert "Study UID" not in browser.page_source
    browser.get(node.url + "/ui/routing")
    assert not browser.find_elements(By.ID, "routing-text")
