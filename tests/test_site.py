"""The documentation site in a real browser: maths typeset, figures loaded, citations resolve.

The site is the one ``.ci/run`` built (``GENJAX_SITE_DIR``) or, without it, a fresh
``mkdocs build --strict`` into ``tmp_path``. It is served from a thread on localhost and read by
headless Chromium (``GENJAX_CHROMIUM``, default Debian's ``/usr/bin/chromium``) through
Playwright, which never downloads a browser here.
"""

import contextlib
import functools
import http.server
import importlib.util
import os
import subprocess
import sys
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("GENJAX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings_handlers.python", "pymdownx", "playwright")
NOTE = "derivations/11-ddpm/"  # the DDPM note: ~190 formulas, ~50 cited tests and functions
RESULTS = "diffusion/"  # its results page, with figures
REFERENCE = "reference/genjax.diffusion/"  # the API entries the note links to
MIN_MATH = 100  # typeset formulas expected on the note
MIN_CITATIONS = 30  # links to tests, API entries and source pages expected on the note


def _missing_requirement() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    for name in DOCS_EXTRA:
        if importlib.util.find_spec(name.partition(".")[0]) is None:
            return f"{name} is not installed (pip install -e '.[docs]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if reason := _missing_requirement():
        pytest.skip(reason)
    if given := os.environ.get("GENJAX_SITE_DIR"):
        site_dir = Path(given)
        assert (site_dir / "index.html").exists(), f"GENJAX_SITE_DIR={given} holds no built site"
        return site_dir
    site_dir = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", site_dir],
        cwd=ROOT,
        check=True,
    )
    return site_dir


@pytest.fixture(scope="module")
def base_url(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        with contextlib.closing(context):
            yield context.new_page()


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


@functools.cache
def _fetch_ids(url: str) -> frozenset[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        parser = _Ids()
        parser.feed(response.read().decode("utf-8"))
    return frozenset(parser.ids)


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_function(
        "document.querySelectorAll('.arithmatex').length === 0 || "
        "document.querySelectorAll('.arithmatex .katex').length > 0"
    )


def _maths(page) -> dict:
    """Counts of the page's formulas, and checks that KaTeX typeset each one without error."""
    math = page.evaluate(
        """() => ({
            formulas: document.querySelectorAll('.arithmatex').length,
            typeset: document.querySelectorAll(
                '.arithmatex > .katex, .arithmatex > .katex-display').length,
            errors: [...document.querySelectorAll('.katex-error')].map(e => e.title),
            text: [...document.querySelectorAll('.md-content *')]
                .filter(e => !e.closest('code, pre, .katex'))
                .flatMap(e => [...e.childNodes].filter(n => n.nodeType === Node.TEXT_NODE))
                .map(n => n.textContent).join(' '),
        })"""
    )
    assert math["typeset"] == math["formulas"], "some formulas were left untypeset"
    assert not math["errors"], f"KaTeX could not parse: {math['errors']}"
    assert "$$" not in math["text"] and "\\[" not in math["text"] and "\\(" not in math["text"]
    return math


def _images_loaded(page) -> tuple[int, list[str]]:
    return page.evaluate(
        """() => {
            const imgs = [...document.querySelectorAll('.md-content img')];
            return [imgs.length,
                    imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)];
        }"""
    )


@pytest.mark.browser
def test_note_renders_maths_figures_and_resolving_citations(base_url, browser_page, tmp_path):
    page = browser_page
    _open(page, base_url + NOTE)
    math = _maths(page)
    assert math["typeset"] > MIN_MATH, math["typeset"]

    checked = 0
    for url in (base_url + NOTE, base_url + RESULTS):
        if url != page.url:
            _open(page, url)
        count, broken = _images_loaded(page)
        assert not broken, f"images that did not load on {url}: {broken}"
        checked += count
    assert checked > 0, "no figure was checked"

    _open(page, base_url + NOTE)
    hrefs = page.evaluate(
        "() => [...document.querySelectorAll('.md-content a[href]')].map(a => a.href)"
    )
    citations = sorted(
        {h for h in hrefs if any(f"/{kind}/" in h for kind in ("source", "reference"))}
    )
    assert len(citations) >= MIN_CITATIONS, citations
    assert any("/source/tests/" in h and "#test_" in h for h in citations)
    assert any("/reference/genjax.diffusion/#genjax.diffusion." in h for h in citations)
    for href in citations:
        url, anchor = urldefrag(urljoin(page.url, href))
        ids = _fetch_ids(url)
        assert not anchor or anchor in ids, f"{href}: no element with id {anchor!r}"

    # one hop further: the cited test's anchor is on its source page, and the API entries the
    # note links to show their docstrings' maths and link back to the note
    test_link = next(h for h in citations if "/source/tests/" in h and "#test_" in h)
    page.goto(test_link)
    assert page.locator(f"[id='{urldefrag(test_link)[1]}']").count() == 1
    _open(page, base_url + REFERENCE)
    assert _maths(page)["typeset"] > 20
    back = page.evaluate(
        "() => [...document.querySelectorAll('.md-content a[href]')].map(a => a.href)"
    )
    assert any(urldefrag(h)[0] == base_url + NOTE for h in back)

    page.goto(base_url + NOTE, wait_until="load")
    page.wait_for_selector(".arithmatex .katex")
    page.locator("h2").nth(1).scroll_into_view_if_needed()
    shot = tmp_path / "ddpm-note.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000, shot.stat().st_size
    print(
        f"\n{math['typeset']} formulas typeset, {checked} figures loaded, "
        f"{len(citations)} citation links resolved; screenshot {shot}"
    )


def test_skips_without_chromium(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", Path("/nonexistent/chromium"))
    assert _missing_requirement() == (
        "Chromium not found at /nonexistent/chromium (apt-get install chromium)"
    )


# --------------------------------------------------------------------------------------------
# The hook's rewriting (docs/hooks.py), without a browser
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooks():
    pytest.importorskip("mkdocs", reason="the docs extra is not installed")
    pytest.importorskip("griffe", reason="the docs extra is not installed")
    spec = importlib.util.spec_from_file_location("genjax_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_links_written_from_the_repository_point_into_the_site(hooks):
    note = "derivations/11-ddpm.md"
    text = (
        "![f](../docs/figures/concepts/schedules.png) [b](../benchmarks/README.md#attention) "
        "[n](12-guidance.md#1-x) [w](https://arxiv.org/abs/2006.11239) [s](#notation) "
        "[c](../genjax/nn/unet.py#L12)"
    )
    assert hooks.link_citations(text, note, note) == (
        "![f](../figures/concepts/schedules.png) [b](../benchmarks/README.md#attention) "
        "[n](12-guidance.md#1-x) [w](https://arxiv.org/abs/2006.11239) [s](#notation) "
        "[c](../source/genjax/nn/unet.py.md#L-12)"
    )
    # display maths indented 1-3 spaces (a paragraph for Markdown) is moved to the margin
    assert hooks.link_citations("a\n\n  $$x$$\n", note, note) == "a\n\n$$x$$\n"
    # a results page in docs/ sits at the site's root
    assert hooks.link_citations("[b](../benchmarks/README.md)", "docs/flows.md", "flows.md") == (
        "[b](benchmarks/README.md)"
    )


def test_citations_become_cross_references(hooks):
    test = "tests/test_diffusion.py::test_q_sample_moments"
    text = (
        f"`{test}`, `{test}[a-b]`, `genjax/nn/unet.py`, `genjax/diffusion`, `05-vae.md`, "
        "`q_sample(key, schedule, x0, t)`, `genjax.vae.sample`, `sample`, `jax.jit`, `x`"
    )
    out = hooks.link_citations(text, "derivations/11-ddpm.md", "derivations/11-ddpm.md")
    assert out == (
        f"[`{test}`][{test}], [`{test}[a-b]`][{test}], [`genjax/nn/unet.py`][genjax/nn/unet.py], "
        "[`genjax/diffusion`][genjax/diffusion], [`05-vae.md`][05-vae.md], "
        "[`q_sample(key, schedule, x0, t)`][genjax.diffusion.q_sample], "
        "[`genjax.vae.sample`][genjax.vae.sample], [`sample`][genjax.diffusion.sample], "
        "`jax.jit`, `x`"
    )
    # a name several modules export stays code unless the page names one of them
    assert hooks.link_citations("`sample`", "docs/x.md", "x.md") == "`sample`"
    # fenced code, headings and existing links are left as written
    kept = "```python\n`sample`\n```\n## `q_sample`\n[`q_sample`](x.md) [`q_step`][y]\n"
    assert hooks.link_citations(kept, "docs/x.md", "x.md") == kept


def test_docstring_rst_becomes_markdown(hooks):
    import griffe

    module = griffe.load("genjax.nn.attention", search_paths=[str(ROOT)])
    text = (
        "Masks :func:`causal_mask` of :class:`~genjax.nn.attention.MultiHeadAttention`, "
        ":func:`unknown_name`, :math:`\\sqrt{d_k}`.\n\n"
        ".. math::\n   a = b\n\n   + c \\text{(:func:`f_g`)}\n\n"
        "Checked by ``tests/test_attention.py::x_missing``.\n"
        "Derivation: derivations/03-attention.md"
    )
    assert hooks.rst_to_markdown(text, module) == (
        'Masks <autoref identifier="genjax.nn.attention.causal_mask" optional>'
        "<code>causal_mask</code></autoref> of "
        '<autoref identifier="genjax.nn.attention.MultiHeadAttention" optional>'
        "<code>genjax.nn.attention.MultiHeadAttention</code></autoref>, "
        "`unknown_name`, $\\sqrt{d_k}$.\n\n\n$$\na = b\n+ c \\text{(\\texttt{f\\_g})}\n$$\n\n"
        "Checked by ``tests/test_attention.py::x_missing``.\n"
        "Derivation: [derivations/03-attention.md][derivations/03-attention.md]"
    )
