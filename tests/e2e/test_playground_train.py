"""The playground's training view (/static/playground/train.html) in a real headless
Chromium against a real gunicorn: the spiral trained live by POST /v1/mlp/step past 95%
training accuracy, the loss curve and the decision regions drawn, the optimizer switched
mid-run (a fresh state), a bad lr refused with the field named, and a console with no
error. Skips without Chromium, except under CI=true (tests/e2e/test_playground.py's
fixtures)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import GunicornServer
from tests.e2e.test_playground import browser, console_errors, shots, viewport  # noqa: F401

pytestmark = pytest.mark.e2e
PAGE = "/static/playground/train.html"


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    with GunicornServer(workers=1, threads=4) as srv:
        yield srv
        logs = srv.logs()
    srv.assert_clean_logs(logs)


def _attr(driver: Any, name: str) -> str:
    return driver.execute_script(f"return document.body.getAttribute('data-{name}') || ''")


def _wait(driver: Any, cond: Any, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond())


def _open(driver: Any, url: str) -> None:
    viewport(driver, 1280, 800)
    driver.get(url + PAGE)
    _wait(driver, lambda: _attr(driver, "ready") == "1", 15)


def _click(driver: Any, css: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, css).click()


def test_the_spiral_trains_live_past_95_percent(browser, server, shots: Path):  # noqa: F811
    _open(browser, server.url)
    assert float(_attr(browser, "accuracy")) < 0.7
    _click(browser, "#train-start")
    _wait(browser, lambda: float(_attr(browser, "accuracy") or 0) > 0.95, 90)
    _click(browser, "#train-start")  # pause
    # A request in flight at the pause still lands: read the counters once it has.
    _wait(browser, lambda: int(_attr(browser, "steps")) == int(_attr(browser, "state-step"))
          == 25 * int(_attr(browser, "requests")), 30)
    requests = int(_attr(browser, "requests"))
    steps = int(_attr(browser, "steps"))
    assert requests >= 1 and steps == int(_attr(browser, "state-step")) == 25 * requests
    browser.save_screenshot(str(shots / "train-spiral.png"))
    # The loss curve has a point per drawn step, and it went down.
    points = browser.execute_script(
        "return document.querySelector('#loss-curve polyline').getAttribute('points')")
    ys = [float(p.split(",")[1]) for p in points.split()]
    assert len(ys) >= 2 and ys[-1] > ys[0]  # SVG y grows downward: a lower loss
    # The decision regions hold all three class colours.
    colours = browser.execute_script("""
        var c = document.getElementById('regions'), ctx = c.getContext('2d');
        var seen = {};
        for (var y = 2; y < c.height; y += 24) for (var x = 2; x < c.width; x += 24) {
          var d = ctx.getImageData(x, y, 1, 1).data; seen[d[0] + ',' + d[1] + ',' + d[2]] = 1;
        }
        return Object.keys(seen).length;""")
    assert colours >= 3
    assert console_errors(browser) == []


def test_switching_the_optimizer_starts_a_fresh_state(browser, server):  # noqa: F811
    from selenium.webdriver.support.ui import Select

    _open(browser, server.url)
    _click(browser, "#train-step")
    _wait(browser, lambda: _attr(browser, "requests") == "1", 20)
    _click(browser, "#train-step")
    _wait(browser, lambda: _attr(browser, "requests") == "2", 20)
    assert _attr(browser, "state-step") == "50"
    from selenium.webdriver.common.by import By

    Select(browser.find_element(By.ID, "optimizer")).select_by_value("rmsprop")
    _click(browser, "#train-step")
    _wait(browser, lambda: _attr(browser, "requests") == "3", 20)
    assert _attr(browser, "state-step") == "25"  # rmsprop's own state, from step 0
    assert _attr(browser, "steps") == "75"  # the loss curve goes on
    assert console_errors(browser) == []


def test_a_bad_lr_is_named_and_nothing_changes(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    _open(browser, server.url)
    field = browser.find_element(By.ID, "train-lr")
    field.clear()
    field.send_keys("-1")
    _click(browser, "#train-step")
    _wait(browser, lambda: browser.find_element(By.ID, "train-lr-error").is_displayed(), 10)
    assert field.get_attribute("aria-invalid") == "true"
    assert _attr(browser, "requests") == "0"
    for bad in ("1e400", "abc"):
        field.clear()
        field.send_keys(bad)
        _click(browser, "#train-step")
        assert _attr(browser, "requests") == "0", bad
    # The server's refusal: an lr so large that the objective overflows within the request.
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "optimizer")).select_by_value("sgd")
    field.clear()
    field.send_keys("1e308")
    _click(browser, "#train-step")
    _wait(browser, lambda: "The server said 422" in
          browser.find_element(By.ID, "train-status").text, 20)
    assert _attr(browser, "requests") == "0" and _attr(browser, "steps") == "0"
    assert console_errors(browser, allow=("/v1/mlp/step",)) == []
