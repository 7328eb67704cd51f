"""The notebooks as a user meets them: ``make lab`` (JupyterLab on 127.0.0.1 with a token), a real
browser, "Open With -> Notebook" on the jupytext .py file, "Run All Cells", then a slider dragged
(bound_explorer) or a selection changed and "run" pressed (collapse_lab). The plot's PNG in the
page must change and no error may show anywhere on the page (cell outputs, widget Output areas,
widget views, dialogs).

Needs Playwright (``pip install -e '.[browser]'``) and a system Chromium (``apt-get install
chromium``; ``make test`` installs both, Chromium only when run as root). Without them the test
is skipped with one line saying what is missing. A screenshot of each notebook is saved under the
test's temporary folder; its path is printed (shown by pytest on failure).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from jupyter_test_server import JupyterServer

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0
NOTEBOOKS = ["bound_explorer", "collapse_lab"]
#: Playwright's limit for each wait (ms): generous for a loaded 2-core machine; every wait
#: ends as soon as its condition holds
WAIT_MS = 120_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HOW_TO = ("install it with `apt-get install chromium` (`make test` does, when run as root) "
          "or point CLOP_LAB_CHROMIUM at a Chromium binary")

#: JavaScript: the plot images (PNG data URLs) inside the widget Output areas of the notebook
PLOT_SRCS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel .widget-output .jp-RenderedImage img')].map(img => img.src)"""

#: JavaScript: every error a user could see in the notebook panel, and any dialog
PAGE_ERRORS = r"""() => {
    const found = [];
    const panel = document.querySelector('.jp-NotebookPanel');
    for (const out of panel ? panel.querySelectorAll('.jp-OutputArea-output') : []) {
        const mime = out.getAttribute('data-mime-type') || '';
        const text = out.innerText || '';
        const where = out.closest('.widget-output') ? 'widget Output' : 'cell output';
        if (mime === 'application/vnd.jupyter.stderr' && /Traceback|Error/.test(text))
            found.push(`${where}, stderr: ${text.slice(-600)}`);
        if (mime === 'text/plain' && /^(VBox|HBox|Output)\(/.test(text))
            found.push(`${where}, a widget as text (no widget manager?): ${text.slice(0, 200)}`);
    }
    const views = '.jupyter-widgets, .jupyter-widgets-error-widget';
    for (const el of panel ? panel.querySelectorAll(views) : [])
        if (el.classList.contains('jupyter-widgets-error-widget')
                || /^Error displaying widget/.test(el.textContent))
            found.push(`widget view: ${el.textContent.slice(0, 300)}`);
    for (const d of document.querySelectorAll('.jp-Dialog'))
        found.push(`dialog: ${d.innerText.slice(0, 300)}`);
    return found;
}"""


def chromium_path() -> str | None:
    env = os.environ.get("CLOP_LAB_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def missing_requirement() -> str | None:
    """Why the browser test cannot run here (one line), or None."""
    try:
        import jupyterlab  # noqa: F401
        import jupytext  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return (f"lab browser test skipped: {e.name} is not installed; "
                "run `pip install -e '.[dev,browser]'` (`make test` does)")
    if chromium_path() is None:
        env = os.environ.get("CLOP_LAB_CHROMIUM")
        where = (f"CLOP_LAB_CHROMIUM={env} is not executable" if env
                 else "none on PATH (" + ", ".join(CHROMIUM_NAMES) + ")")
        return f"lab browser test skipped: no Chromium, {where}; {HOW_TO}"
    return None


# --- JupyterLab as `make lab` starts it, in a temporary root ------------------------------------

class Lab(JupyterServer):
    """``jupyter lab`` on 127.0.0.1, a port chosen by the OS, a token, and a temporary root holding
    copies of the notebooks (so an autosave never touches the repository) with fresh config,
    runtime, data and settings folders."""

    name = "jupyter lab"
    log_tail = 4000

    def __init__(self, tmp: Path):
        root = tmp / "root"
        root.mkdir()
        for name in NOTEBOOKS:
            shutil.copy(ROOT / "notebooks" / f"{name}.py", root)
        # no "news" pop-up over the page (it would also try the network)
        news = tmp / "config" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        news.mkdir(parents=True)
        (news / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        super().__init__(tmp, "jupyterlab", root, log_name="lab.log",
                         args=("--ServerApp.allow_root=True",) if AS_ROOT else (),
                         env={"JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces")})


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    server = Lab(tmp_path_factory.mktemp("lab_browser"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        args = ["--no-sandbox"] if AS_ROOT else []  # Chromium's sandbox refuses root
        chromium = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            yield chromium
        finally:
            chromium.close()


# --- what the user does ---------------------------------------------------------------------------

def png_digest(src: str) -> str:
    """sha256 (16 hex digits) of a PNG data URL's bytes, after checking that it is a PNG."""
    head, _, data = src.partition(",")
    assert head == "data:image/png;base64", head[:80]
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return hashlib.sha256(raw).hexdigest()[:16]


def wait_until(page, condition: str, arg=None, what: str = "") -> None:
    """Wait until the JavaScript ``condition(arg)`` holds, or an error shows on the page (then
    fail at once with it, instead of waiting for a plot that will not come)."""
    page.wait_for_function(f"arg => ({PAGE_ERRORS})().length > 0 || ({condition})(arg)",
                           arg=arg, timeout=WAIT_MS)
    errors = page.evaluate(PAGE_ERRORS)
    assert not errors, f"error on the page while waiting for {what}:\n" + "\n".join(errors)


def wait_kernel_idle(page, name: str) -> None:
    """The status bar's kernel item for this notebook reads "<kernel> | Idle"."""
    wait_until(page, """name => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(
                            e => e.title === `Change kernel for ${name}`
                                 && / \\| Idle$/.test(e.textContent))""",
               f"{name}.py", "the kernel to be idle")


def wait_new_plot(page, old: str | None) -> str:
    """Wait until the widget Output shows exactly one plot, different from ``old``."""
    wait_until(page, f"old => {{ const s = ({PLOT_SRCS})(); "
                     "return s.length === 1 && s[0] !== old; }",
               old, "a new plot")
    return page.evaluate(PLOT_SRCS)[0]


def menu(page, *labels: str) -> None:
    """Click through a menu: the menu bar's first label (if it is one), then each item by its label
    (hovering the submenus on the way)."""
    items = list(labels)
    top = page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{re.escape(items[0])}$"))
    if top.count():
        top.click()
        items.pop(0)
    for i, label in enumerate(items):
        item = page.locator(".lm-Menu .lm-Menu-item").filter(
            has=page.locator(".lm-Menu-itemLabel", has_text=re.compile(f"^{re.escape(label)}$")))
        item.hover() if i < len(items) - 1 else item.click()


def open_with_notebook(page, name: str) -> None:
    """Right-click the file in the file browser, then Open With -> Notebook (jupytext's path)."""
    item = page.locator(f'.jp-DirListing-item[title^="Name: {name}.py"]')
    item.wait_for(timeout=WAIT_MS)
    item.click(button="right")
    menu(page, "Open With", "Notebook")
    page.locator(".jp-NotebookPanel").wait_for(timeout=WAIT_MS)


def run_all(page, name: str, n_code: int) -> None:
    """Run -> Run All Cells; wait until every code cell has an execution count and the kernel is
    idle again."""
    menu(page, "Run", "Run All Cells")
    wait_until(page, """n => { const p = [...document.querySelectorAll(
                            '.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]
                            .map(e => e.textContent.trim());
                        return p.length === n && p.every(t => /^\\[\\d+\\]:$/.test(t)); }""",
               n_code, "every cell to run")
    wait_kernel_idle(page, name)


def change_widget(page, name: str) -> str:
    """The user's change: drag the eta slider (bound_explorer); select lr 1.0 alone and press
    "run" (collapse_lab). Returns what changed, in words."""
    if name == "bound_explorer":
        slider = page.locator(".widget-slider").filter(has=page.locator('label:text-is("eta")'))
        readout = slider.locator(".widget-readout")
        before = readout.inner_text()
        box = slider.locator(".noUi-handle").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 25, y, steps=5)
        page.mouse.up()
        page.wait_for_function("([el, b]) => el.textContent.trim() !== b",
                               arg=[readout.element_handle(), before], timeout=WAIT_MS)
        return f"eta slider dragged 25 px: {before} -> {readout.inner_text()}"
    select = page.locator(".widget-select-multiple").filter(
        has=page.locator('label:text-is("lr")')).locator("select")
    select.select_option(label=["1.0"])
    page.locator("button.widget-button", has_text=re.compile(r"^run$")).click()
    return "lr selection 0.1, 10, 1000 -> 1.0 alone, then 'run' pressed"


def save_and_reread(page, name: str, lab: Lab, cells) -> None:
    """File -> Save Python File writes the .py through jupytext: the same text, and no .ipynb
    beside it."""
    import jupytext

    path = lab.root / f"{name}.py"
    mtime = path.stat().st_mtime_ns
    menu(page, "File", "Save Python File")  # the file is the .py
    # the server has written the whole file once the status bar says so (it writes in place:
    # a reader polling the file could see it half written)
    wait_until(page, """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(
                            e => e.textContent.trim() === 'Saving completed')""", None, "the save")
    assert path.stat().st_mtime_ns != mtime, f"{name}.py was not written"
    saved = jupytext.read(path)
    assert [(c.cell_type, c.source) for c in saved.cells] == cells, "the saved .py changed cells"
    # the header too: opening and saving a notebook in the lab leaves the repository's file as it was
    assert path.read_text() == (ROOT / "notebooks" / f"{name}.py").read_text(), \
        f"saving rewrote {name}.py (its jupytext header?)"
    assert not list(lab.root.glob("*.ipynb")), "saving wrote an .ipynb beside the .py"


# one worker, one JupyterLab and one Chromium for both notebooks (when --dist loadgroup groups;
# with pytest 9.2 and pytest-xdist 3.8 it does not, pytest-dev/pytest-xdist#1386, and each worker
# starts its own: slower, still correct)
@pytest.mark.xdist_group("lab_browser")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_in_jupyterlab(lab, browser, name, tmp_path):
    import jupytext

    nb = jupytext.read(ROOT / "notebooks" / f"{name}.py")
    cells = [(c.cell_type, c.source) for c in nb.cells]
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    shot = tmp_path / f"{name}.png"
    messages = []
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.on("pageerror", lambda e: messages.append(f"page error: {e}"))
    page.on("console", lambda m: messages.append(f"console {m.type}: {m.text[:300]}")
            if m.type == "error" else None)
    t0 = time.monotonic()
    try:
        # a workspace of its own: the other notebook's tab is not restored into this page
        page.goto(f"{lab.url}/lab/workspaces/{name}?token={lab.token}")
        open_with_notebook(page, name)
        # the jupytext pairing: the .py opened as a notebook with the file's cells
        wait_until(page, "n => document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length == n",
                   len(cells), "the notebook's cells")
        wait_kernel_idle(page, name)
        run_all(page, name, n_code)
        first = wait_new_plot(page, None)
        page.locator(".jp-NotebookPanel .widget-vbox").first.evaluate(
            "e => e.scrollIntoView({block: 'start'})")
        what = change_widget(page, name)
        second = wait_new_plot(page, first)
        wait_kernel_idle(page, name)
        assert page.evaluate(PLOT_SRCS) == [second], "more than one plot, or the new one went away"
        assert page.evaluate(PAGE_ERRORS) == [], page.evaluate(PAGE_ERRORS)
        before, after = png_digest(first), png_digest(second)
        assert before != after
        save_and_reread(page, name, lab, cells)
        print(f"{name}: {what}; plot sha256 {before} -> {after} "
              f"({time.monotonic() - t0:.1f} s in the browser)")
    except BaseException:
        print(f"{name}: failed after {time.monotonic() - t0:.1f} s; browser messages:",
              *messages[-20:], "JupyterLab log:", lab.log_text(), sep="\n")
        raise
    finally:
        try:  # the widgets and the plot in view
            page.locator(".jp-NotebookPanel .widget-vbox").first.evaluate(
                "e => e.scrollIntoView({block: 'start'})", timeout=5_000)
        except Exception:  # noqa: BLE001 - no widgets to scroll to: keep the page as it is
            pass
        try:
            page.screenshot(path=str(shot), timeout=30_000)
            print(f"screenshot: {shot}")
        except Exception as e:  # noqa: BLE001 - keep the test's own error
            print(f"no screenshot: {type(e).__name__}: {e}")
        context.close()
        # stop this notebook's kernel
        for session in lab.rest("GET", "/api/sessions", check=False) or []:
            lab.rest("DELETE", f"/api/sessions/{session['id']}", check=False)
