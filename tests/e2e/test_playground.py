"""The playground page (GET /) in a real headless Chromium against a real gunicorn.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` (``.ci/run``
installs them); Selenium drives them through the explicit driver path, so nothing is
downloaded. Without them these tests skip, except under ``CI=true``, where that fails.

Each test checks the browser's console: a page error, a CSP violation or an unexpected
failed request fails it. Screenshots of every preset are saved under a temporary directory
(the path is printed; ``GRADSERVE_SCREENSHOTS`` names another one).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "service" / "static" / "playground"
API_KEY = "playground-test-key-0123456789"

MLP_VALUES = {
    "X": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]],
    "W1": [[0.1, 0.2, -0.3, 0.4], [0.5, -0.6, 0.7, 0.1], [-0.2, 0.3, 0.1, -0.5]],
    "b1": [0.1, 0.0, -0.1, 0.2],
    "W2": [[0.3, -0.2, 0.1], [0.2, 0.4, -0.3], [-0.5, 0.1, 0.2], [0.1, 0.3, 0.4]],
    "b2": [0.0, 0.1, -0.1],
    "y": [0, 2],
}


def fmt(x: float) -> str:
    """The page's number format: integers as is, else 4 significant digits."""
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return repr(float(f"{x:.4g}"))


def mlp_reference() -> tuple[float, np.ndarray]:
    """The preset MLP's loss and dL/db2 in plain NumPy (not the engine)."""
    v = {k: np.array(a, dtype=np.float64) for k, a in MLP_VALUES.items()}
    h = np.maximum(v["X"] @ v["W1"] + v["b1"], 0)
    s = h @ v["W2"] + v["b2"]
    z = s - s.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = v["y"].astype(int)
    loss = float(-np.log(p[np.arange(2), labels]).mean())
    ds = p.copy()
    ds[np.arange(2), labels] -= 1
    return loss, (ds / 2).sum(axis=0)


# --- the page without a browser: headers, files, packaging ---------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    with GunicornServer(workers=1, threads=4) as srv:
        yield srv
        logs = srv.logs()
    srv.assert_clean_logs(logs)


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - our test server
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_page_is_served_with_a_strict_csp(server: GunicornServer) -> None:
    for path in ("/", "/playground"):
        status, headers, body = _get(server.url + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith("text/html")
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        html = body.decode()
        # No inline script, style or event handler: the CSP would block them anyway.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.I)
    for name, ctype in [("app.js", "javascript"), ("layout.js", "javascript"),
                        ("ops.js", "javascript"), ("style.css", "text/css"),
                        ("favicon.svg", "image/svg+xml")]:
        status, headers, _ = _get(f"{server.url}/static/playground/{name}")
        assert status == 200 and ctype in headers["Content-Type"], name
        assert "Content-Security-Policy" in headers
    for bad in ("/static/playground/../../app.py", "/static/playground/%2e%2e/api/playground.py",
                "/static/playground/nope.js"):
        assert _get(server.url + bad)[0] == 404, bad


def test_static_files_fetch_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        # The SVG namespace is an identifier, not a fetch.
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, (path.name, urls)
        assert "eval(" not in text and "innerHTML" not in text, path.name


def test_package_data_covers_every_static_file() -> None:
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["service"]
    service = ROOT / "service"
    matched = {p for g in globs for p in service.glob(g) if p.is_file()}
    assert matched == {p for p in (service / "static").rglob("*") if p.is_file()}


def test_built_wheel_ships_the_page(tmp_path: Path) -> None:
    """`pip install .` (the Makefile's and the Dockerfile's install) carries the page."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
         str(ROOT)], capture_output=True, text=True, timeout=240, check=False)
    if proc.returncode != 0 and os.environ.get("CI", "").lower() != "true" and \
            "network" in (proc.stderr + proc.stdout).lower():
        pytest.skip("pip wheel needs the package index for its build backend")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("gradserve-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in STATIC.iterdir():
        assert f"service/static/playground/{path.name}" in names


# --- the browser -------------------------------------------------------------------------------


def _browser_paths() -> tuple[str, str]:
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                                  "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if not chromium or not driver:
        message = ("needs selenium and Debian's chromium + chromium-driver "
                   "(apt-get install -y chromium chromium-driver)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: the playground must be tested)")
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("GRADSERVE_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("playground-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nplayground screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", "--window-size=1280,800"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def viewport(driver: Any, width: int, height: int) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def console_errors(driver: Any, allow: tuple[str, ...] = ()) -> list[str]:
    """SEVERE browser log entries since the last call, minus those matching ``allow``."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]


class Page:
    """The playground in the browser, with waits on the page's own ``data-runs`` counter."""

    def __init__(self, driver: Any, url: str) -> None:
        self.d = driver
        self.url = url

    def open(self, path: str = "/") -> Page:
        from selenium.webdriver.support.ui import WebDriverWait

        viewport(self.d, 1280, 800)
        self.d.get(self.url + path)
        WebDriverWait(self.d, 15).until(lambda d: self.runs() >= 1)
        return self

    def runs(self) -> int:
        return int(self.d.execute_script(
            "return Number(document.body.getAttribute('data-runs') || 0)"))

    def after(self, action: Any) -> None:
        """Do ``action`` and wait until the page has finished the run it starts."""
        from selenium.webdriver.support.ui import WebDriverWait

        before = self.runs()
        action()
        WebDriverWait(self.d, 15).until(lambda d: self.runs() > before)

    def el(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.d.find_element(By.CSS_SELECTOR, css)

    def els(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return self.d.find_elements(By.CSS_SELECTOR, css)

    def preset(self, name: str) -> None:
        self.after(lambda: self.el(f'button[data-preset="{name}"]').click())

    def type(self, css: str, text: str) -> None:
        field = self.el(css)
        field.clear()
        if text:
            # One script call, not keystrokes: long texts would be slow to type.
            self.d.execute_script("arguments[0].value = arguments[1];", field, text)

    def compute(self) -> None:
        self.after(lambda: self.el("#run").click())

    def counts(self) -> tuple[int, int]:
        return (len(self.els("#graph g.node")),
                len(self.els("#graph g.edge:not(.out-wire)")))

    def wire(self, css: str) -> tuple[str, str]:
        """(value text, gradient text) of the wire ``css`` selects (one element)."""
        found = self.els(f"#graph g.edge{css}")
        assert len(found) == 1, (css, len(found))
        g = found[0]
        value = g.find_elements("css selector", "[data-kind=value]")
        grad = g.find_elements("css selector", "[data-kind=grad]")
        return (value[0].text if value else "", grad[0].text if grad else "")

    def text(self, css: str) -> str:
        return self.el(css).text


@pytest.fixture
def page(browser: Any, server: GunicornServer) -> Iterator[Page]:
    console_errors(browser)  # drop what earlier tests left
    yield Page(browser, server.url).open()
    assert console_errors(browser, allow=getattr(browser, "allowed_errors", ())) == []
    browser.allowed_errors = ()


# (x + y) * z at x=-2, y=5, z=-4: q = 3 with gradient -4, f = -12 (the lecture's numbers).
PRESETS = {
    "add-mul": {
        "counts": (5, 4),
        "wires": {'[data-from="q"]': ("3", "∂ -4"), '[data-from="x"]': ("-2", "∂ -4"),
                  '[data-from="y"]': ("5", "∂ -4"), '[data-from="z"]': ("-4", "∂ 3"),
                  ".out-wire": ("-12", "∂ 1")},
    },
    "sigmoid": {
        # 5 inputs, 8 gates, the two constant 1s; 14 wires.
        "counts": (15, 14),
        "wires": {'[data-from="w0"]': ("2", "∂ -0.1966"), '[data-from="x0"]': ("-1", "∂ 0.3932"),
                  '[data-from="w1"]': ("-3", "∂ -0.3932"), '[data-from="x1"]': ("-2", "∂ -0.5898"),
                  '[data-from="w2"]': ("-3", "∂ 0.1966"), ".out-wire": ("0.7311", "∂ 1")},
    },
    "vector": {
        # W, x, q = W @ x, q ** 2 (with its constant 2), f = sum: q = [0.22, 0.26],
        # df/dq = 2q = [0.44, 0.52], df/dx = 2 W^T q = [-0.112, 0.636].
        "counts": (6, 5),
        "wires": {'[data-from="q"]': ("[0.22, 0.26]", "∂ [0.44, 0.52]"),
                  '[data-from="x"]': ("[0.2, 0.4]", "∂ [-0.112, 0.636]"),
                  '[data-from="W"]': ("(2, 2)", "∂ (2, 2)"), ".out-wire": ("0.116", "∂ 1")},
    },
    "mlp": {
        # X, W1, b1, W2, b2, y; X@W1, +b1, relu, @W2, +b2, softmax_cross_entropy.
        "counts": (12, 11),
        "wires": {'[data-from="b2"]': ("[0, 0.1, -0.1]",
                                       "∂ [" + ", ".join(fmt(g) for g in mlp_reference()[1])
                                       + "]"),
                  '[data-from="h"]': ("(2, 4)", "∂ (2, 4)"),
                  '[data-from="y"]': ("[0, 2]", ""),
                  ".out-wire": (fmt(mlp_reference()[0]), "∂ 1")},
    },
    "cnn": {
        # x, w, b, W, c, y; conv2d, relu, max_pool2d, reshape, linear, softmax_cross_entropy
        # (docs/cnn.md's worked example: dL/dc = softmax(s) - onehot(1)).
        "counts": (12, 11),
        "wires": {'[data-from="c"]': ("[0, 0.1, -0.1]", "∂ [0.1689, -0.4447, 0.2758]"),
                  '[data-from="p"]': ("(1, 2, 2, 2)", "∂ (1, 2, 2, 2)"),
                  '[data-from="y"]': ("[1]", ""), ".out-wire": ("0.5882", "∂ 1")},
    },
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_draws_the_lecture_numbers(page: Page, shots: Path, name: str) -> None:
    page.preset(name)
    want = PRESETS[name]
    assert page.counts() == want["counts"]
    for css, (value, grad) in want["wires"].items():
        assert page.wire(css) == (value, grad), css
    assert page.text("#status").startswith("Output ")
    # Inputs on the left, the output on the right.
    xs = {g.get_attribute("data-id"): g.rect["x"] for g in page.els("#graph g.node")}
    out = page.el("#graph g.node.output").get_attribute("data-id")
    inputs = [g.get_attribute("data-id") for g in page.els("#graph g.node.input")]
    assert max(xs[i] for i in inputs) < xs[out] == max(xs.values())
    page.d.save_screenshot(str(shots / f"{name}-1280x800.png"))


def test_sigmoid_gradients_match_the_api(page: Page, server: GunicornServer) -> None:
    """The summary table shows what the API returns, to 4 significant digits."""
    page.preset("sigmoid")
    body = json.dumps({"expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
                       "values": {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}})
    _, _, raw = server.post("/v1/gradients", json.loads(body))
    answer = json.loads(raw)
    rows = {r.find_element("css selector", "th").text: r for r in page.els("#summary tr")[1:]}
    for name, grad in answer["gradients"].items():
        assert rows[name].find_element("css selector", "td.g").text == fmt(grad)
    assert rows["output"].find_element("css selector", "td.v").text == fmt(answer["output"])


def test_full_tensor_on_focus(page: Page) -> None:
    """Tab to W (a focusable node): the details show its full value and gradient,
    dW = 2q·xᵀ = [[0.088, 0.176], [0.104, 0.208]]."""
    page.preset("vector")
    node = page.el('#graph g.node[data-id="W"]')
    page.d.execute_script("arguments[0].focus()", node)
    cells = [float(td.text) for td in page.els("#details table")[1].find_elements(
        "css selector", "td")]
    assert cells == pytest.approx([0.088, 0.176, 0.104, 0.208], abs=1e-12)
    assert "(2, 2)" in page.text("#details")


def test_invalid_expression_shows_the_api_message_at_the_field(
        page: Page, browser: Any, server: GunicornServer) -> None:
    browser.allowed_errors = ("status of 422",)  # the page's own failed fetches
    for text, fragment in [("x +", "syntax error"), ("sigmod(x)", "did you mean 'sigmoid'"),
                           ("x.real", "attribute access (x.real) is not supported")]:
        page.type("#expression", text)
        page.type("#values", '{"x": 1}')
        page.compute()
        _, _, raw = server.post("/v1/gradients", {"expression": text, "values": {"x": 1}})
        detail = json.loads(raw)["detail"]
        assert fragment in detail
        error = page.el("#expression-error")
        assert error.is_displayed() and detail in error.text
        assert page.el("#expression").get_attribute("aria-invalid") == "true"
        assert not page.el("#values-error").is_displayed()
        assert page.counts() == (0, 0)  # nothing drawn for text that does not parse
    # The caret under the line and column the message names.
    page.type("#expression", "q = x +\nf = q")
    page.compute()
    assert page.text("#expression-error").endswith("q = x +\n         ^")


def test_value_and_node_errors_are_shown_at_the_node(
        page: Page, browser: Any) -> None:
    browser.allowed_errors = ("status of 422",)
    page.preset("add-mul")
    page.type("#values", '{"x": -2, "y": 5}')
    page.compute()
    assert "missing a value for input 'z'" in page.text("#values-error")
    assert page.counts() == (5, 4)  # the structure, from registering the expression
    marked = page.els("#graph g.node.has-error")
    assert [g.get_attribute("data-id") for g in marked] == ["z"]
    # A graph spec with an unknown op: the message at the graph field, the node marked.
    from selenium.webdriver.support.ui import Select

    Select(page.el("#source")).select_by_value("graph")
    page.type("#graph-json", json.dumps({
        "inputs": {"x": {}}, "nodes": [{"id": "s", "op": "sigmod", "args": ["x"]},
                                       {"id": "f", "op": "mul", "args": ["s", 2]}],
        "output": "f"}))
    page.type("#values", '{"x": 1}')
    page.compute()
    assert "unknown op 'sigmod' (did you mean 'sigmoid'?)" in page.text("#graph-error")
    assert [g.get_attribute("data-id") for g in page.els("#graph g.node.has-error")] == ["s"]
    # Values that are not JSON never reach the API.
    page.type("#values", "{x: 1")
    page.compute()
    assert "not valid JSON" in page.text("#values-error")


def test_step_mode_forward_then_backward(page: Page, shots: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    page.preset("add-mul")
    page.el("#step-start").send_keys(Keys.ENTER)
    narration = page.el("#narration")
    assert narration.text.startswith("Step 1/9") and "x = -2, y = 5, z = -4" in narration.text
    hidden = page.els("#graph .hidden-step")
    assert len(hidden) >= 5  # gradients and the not-yet-computed values
    nxt = page.el("#step-next")
    texts = []
    for i in range(8):
        nxt.send_keys(Keys.SPACE if i % 2 else Keys.ENTER)  # both activate a button
        texts.append(narration.text)
        if i == 4:
            page.d.save_screenshot(str(shots / "add-mul-step-mode.png"))
    assert "forward: q = x + y = -2 + 5 = 3" in texts[0]
    assert "forward: f = q * z = 3 * -4 = -12" in texts[1]
    assert "start at the output with ∂ = 1" in texts[2]
    backward = "\n".join(texts[3:7])
    # At the multiply gate the gradient swaps the inputs; the add gate distributes it.
    assert "∂q = local -4 [the other input] × upstream 1 = -4" in backward
    assert "∂z = local 3 [the other input] × upstream 1 = 3" in backward
    assert "∂x = local 1 [1] × upstream -4 = -4" in backward
    assert "∂y = local 1 [1] × upstream -4 = -4" in backward
    assert texts[7].endswith("done: ∂x = -4, ∂y = -4, ∂z = 3")
    assert page.els("#graph .hidden-step") == []
    assert nxt.get_attribute("disabled") == "true"
    page.el("#step-back").click()
    assert narration.text.startswith("Step 8/9")
    page.el("#step-reset").click()
    assert narration.text == "" and page.els("#graph .hidden-step") == []


def test_keyboard_only(page: Page) -> None:
    """Presets, the form and the picture work from the keyboard alone."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    d = page.d
    # Tab from the top of the page reaches the first preset, then the next one.
    ActionChains(d).send_keys(Keys.TAB).perform()
    assert d.switch_to.active_element.get_attribute("data-preset") == "add-mul"
    ActionChains(d).send_keys(Keys.TAB).perform()
    assert d.switch_to.active_element.get_attribute("data-preset") == "sigmoid"
    page.after(lambda: ActionChains(d).send_keys(Keys.ENTER).perform())
    assert page.counts() == (15, 14)
    # Ctrl+Enter in the expression field computes.
    page.type("#expression", "a = x * x\na += 1")
    page.type("#values", '{"x": 3}')
    page.after(lambda: page.el("#expression").send_keys(Keys.CONTROL, Keys.ENTER))
    assert page.wire(".out-wire") == ("10", "∂ 1")
    # Tab into the picture: nodes are focusable, Enter selects, arrows move between them.
    node = page.el('#graph g.node[data-id="x"]')
    d.execute_script("arguments[0].focus()", node)
    ActionChains(d).send_keys(Keys.ENTER).perform()
    assert "selected" in node.get_attribute("class")
    assert "input x" in page.text("#details")
    order = [g.get_attribute("data-id") for g in page.els("#graph g.node")]  # reading order
    assert order[0] == "x" and order[-1] == "a'"
    ActionChains(d).send_keys(Keys.ARROW_RIGHT).perform()
    assert d.switch_to.active_element.get_attribute("data-id") == order[1]
    ActionChains(d).send_keys(Keys.TAB).perform()
    assert d.switch_to.active_element.get_attribute("data-id") == order[2]
    # Space toggles the gradient check and recomputes.
    page.after(lambda: page.el("#check").send_keys(Keys.SPACE))
    assert page.el('#graph g.node[data-id="x"] .badge-text.ok').text.startswith("✓ check")


def test_rebinding_is_drawn_with_primes(page: Page) -> None:
    page.type("#expression", "c = a + b\nc += 1\nc = c * c")
    page.type("#values", '{"a": 1, "b": 2}')
    page.compute()
    ids = {g.get_attribute("data-id") for g in page.els("#graph g.node.op")}
    assert ids == {"c", "c'", "c''"}
    assert page.wire('[data-from="c"]') == ("3", "∂ 8")
    assert page.wire(".out-wire")[0] == "16"
    # c' feeds both arguments of c'' = c' * c': two wires, each carrying local × upstream.
    assert len(page.els('#graph g.edge[data-from="c\'"]')) == 2
    assert {g.find_element("css selector", "[data-kind=grad]").text
            for g in page.els('#graph g.edge[data-from="c\'"]')} == {"∂ 4"}
    assert page.wire('[data-from="a"]')[1] == "∂ 8"


def test_gradient_check_and_jacobian_toggles(page: Page) -> None:
    page.preset("add-mul")
    page.after(lambda: page.el("#check").click())
    badges = {g.get_attribute("data-id"): g.find_element("css selector", ".badge-text").text
              for g in page.els("#graph g.node.input")}
    assert set(badges) == {"x", "y", "z"}
    assert all(b.startswith("✓ check ") for b in badges.values()), badges
    assert len(page.els("#summary .badge.ok")) == 3
    page.after(lambda: page.el("#jacobian").click())
    view = page.el("#jacobian-view")
    assert view.is_displayed()
    jac = {s.get_attribute("data-input"): s.find_element("css selector", "td").text
           for s in view.find_elements("css selector", ".jac")}
    assert jac == {"x": "-4", "y": "-4", "z": "3"}
    page.preset("vector")  # the toggles stay on: W's Jacobian is (2, 2) for a scalar output
    sec = page.el('#jacobian-view .jac[data-input="W"]')
    cells = [float(td.text) for td in sec.find_elements("css selector", "td")]
    assert cells == pytest.approx([0.088, 0.176, 0.104, 0.208], abs=1e-12)


def test_registered_graph_by_id(page: Page, server: GunicornServer) -> None:
    from selenium.webdriver.support.ui import Select

    status, _, raw = server.post("/v1/graphs", {"expression": "q = x + y\nf = q * z"})
    assert status in (200, 201)
    graph_id = json.loads(raw)["graph_id"]
    Select(page.el("#source")).select_by_value("graph_id")
    page.type("#graph-id", graph_id)
    page.type("#values", '{"x": -2, "y": 5, "z": -4}')
    page.compute()
    assert page.counts() == (5, 4)
    assert page.wire('[data-from="q"]') == ("3", "∂ -4")
    assert page.el("#graph g.node.output").get_attribute("data-id") == "f"  # from the spec
    # An unknown id: the 404's message at the id field.
    page.d.allowed_errors = ("status of 404",)
    page.type("#graph-id", "g-" + "0" * 64)
    page.compute()
    assert f"graph 'g-{'0' * 64}' is not registered here" in page.text("#graph-id-error")
    assert page.el("#graph-id").get_attribute("aria-invalid") == "true"
    assert page.counts() == (0, 0)


def test_gradient_descent_step(page: Page) -> None:
    """The lecture's open question, "how is W updated?": W ← W − lr·∂W, then compute again.
    (x + y)·z at (-2, 5, -4) with lr 0.1 moves to (-1.6, 5.4, -4.3): f from -12 to -16.34."""
    page.preset("add-mul")
    page.type("#lr", "0.1")
    page.after(lambda: page.el("#descend").click())
    assert json.loads(page.el("#values").get_attribute("value")) == {
        "x": -1.6, "y": 5.4, "z": -4.3}
    assert page.text("#status") == "Gradient step (lr 0.1): output -12 → -16.34"
    assert page.wire(".out-wire") == ("-16.34", "∂ 1")
    # Integer labels have no gradient and stay as they are.
    page.preset("mlp")
    loss = float(page.wire(".out-wire")[0])
    page.after(lambda: page.el("#descend").click())
    values = json.loads(page.el("#values").get_attribute("value"))
    assert values["y"] == [0, 2]
    assert float(page.wire(".out-wire")[0]) < loss


def test_narrow_screen(page: Page, shots: Path) -> None:
    viewport(page.d, 400, 860)
    page.preset("add-mul")
    width = page.d.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400  # the form reflows; only the picture's own box scrolls sideways
    assert page.wire('[data-from="q"]') == ("3", "∂ -4")
    stage = page.el("#stage")
    page.d.execute_script("arguments[0].scrollIntoView()", stage)
    assert stage.size["width"] <= 400
    page.d.save_screenshot(str(shots / "add-mul-400-narrow.png"))
    viewport(page.d, 1280, 800)


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[GunicornServer]:
    with GunicornServer(env={"GRADSERVE_API_KEYS": API_KEY}, workers=1, threads=2) as srv:
        yield srv


def test_api_key_field(browser: Any, keyed_server: GunicornServer) -> None:
    console_errors(browser)
    page = Page(browser, keyed_server.url)
    viewport(browser, 1280, 800)
    browser.get(keyed_server.url + "/")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda d: page.runs() >= 1)
    assert "API key" in page.text("#api-key-error")
    assert page.counts() == (0, 0)
    assert page.el("#key-box").get_attribute("open") == "true"  # opened by the 401
    key = page.el("#api-key")
    key.send_keys(API_KEY)
    page.compute()
    assert page.wire(".out-wire") == ("-12", "∂ 1")
    stored = browser.execute_script(
        "return [sessionStorage.getItem('gradserve.apiKey'), localStorage.length, "
        "document.cookie]")
    assert stored == [API_KEY, 0, ""]
    assert console_errors(browser, allow=("status of 401",)) == []
    browser.execute_script("sessionStorage.clear()")


def test_numbers_format_like_the_page() -> None:
    assert [fmt(x) for x in (-12.0, 3.0, 0.7310585786300049, -0.19661193324148185, 0.116,
                             0.0484)] == ["-12", "3", "0.7311", "-0.1966", "0.116", "0.0484"]
    assert math.isclose(mlp_reference()[0], 1.6905310052420017, rel_tol=1e-12)


def test_long_chains_stay_responsive(page: Page) -> None:
    """x + x + ... : a value used by every gate of a long chain. Drawn up to the page's
    node cap (the layout skips per-layer dummies past a budget), summarized past it."""
    page.type("#expression", "+".join(["x"] * 400))
    page.type("#values", '{"x": 0.5}')
    page.compute()
    assert page.counts() == (400, 798)
    assert page.wire(".out-wire") == ("200", "∂ 1")
    assert page.wire('[data-to="%1"][data-from="x"]:not([data-edge$="#1"])')[1] == "∂ 1"
    page.type("#expression", "+".join(["x"] * 10_000))
    page.compute()
    assert "draws at most" in page.text("#status")
    assert page.counts() == (0, 0)
    rows = {r.find_element("css selector", "th").text: r for r in page.els("#summary tr")[1:]}
    assert rows["x"].find_element("css selector", "td.g").text == "10000"


def test_step_mode_shows_shapes_at_tensor_gates(page: Page) -> None:
    """The student's question, "how is the order of the matrix product decided?": the
    shapes decide, dW = g·xᵀ and dx = Wᵀ·g, written out with the lecture's numbers."""
    page.preset("vector")
    page.el("#step-start").click()
    texts = [page.text("#narration")]
    nxt = page.el("#step-next")
    while nxt.get_attribute("disabled") is None:
        nxt.click()
        texts.append(page.text("#narration"))
    assert len(texts) == 10
    story = "\n".join(texts)
    assert "inputs: W = [[0.1, 0.5], [-0.3, 0.8]], x = [0.2, 0.4]" in story
    assert "forward: q = W @ x = W(2, 2) @ x(2,) = [0.22, 0.26]" in story
    assert "∂q = 2·x^1 ⊙ upstream (2,) = [0.44, 0.52]" in story
    assert "∂W = g·xᵀ: (2,) ⊗ (2,) → (2, 2) = [[0.088, 0.176], [0.104, 0.208]]" in story
    assert "∂x = Wᵀ·g: (2, 2) · (2,) → (2,) = [-0.112, 0.636]" in story
