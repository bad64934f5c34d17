"""The subscriber's web page: its files and headers with Flask's test client, the
wheel that ships them, then a real browser (playwright driving the system's
Chromium) against real broker, publisher and subscriber processes: roots, tree,
metadata, tables, plots, Markdown, hostile content, live changes, logins and
subscriptions, and the page behind a reverse proxy under a path prefix."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import blosc2
import numpy as np
import pytest
import requests

from catmqtt.subscriber import page as web_page

from conftest import REPO, Broker, Deployment, catmqtt_cmd, wait_for
from test_views import views

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORDS = {"root": "r00t pw", "reader": "read-pw"}
# Text a publisher might send to run script in the page; it sets window.pwned if it ever runs.
EVIL = "<img src=x onerror=window.pwned=1>"
# Blosc2 keeps vlmeta names short.
EVIL_KEY = "<img src=x onerror=f()>"
SCRIPT = "<script>window.pwned=1</script>"
EVIL_MD = f"""\
# Hostile notes

<script>window.pwned = 1</script>

{EVIL} and <b>not bold</b>

[a script link](javascript:window.pwned=1) and [a good link](https://example.org/docs)

- **strong** and *em* and `code <i>`
- second
"""
SCRIPTS = ["api.js", "app.js", "dom.js", "login.js", "markdown.js", "npy.js", "plot.js"]
# A name with what URLs reserve.
WEIRD = "we?ird #1 %41&x=y.txt"
FILES = [*SCRIPTS, "page.css", "favicon.svg"]
# What would turn a string into markup or code.
SINKS = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(")


# The files and headers, with Flask's test client


@pytest.fixture
def client(tmp_path, sample_root):
    with views(tmp_path, sample_root) as made:
        yield made.app.test_client()


def test_page_and_its_headers(client):
    response = client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert b'<script type="module" src="static/app.js">' in response.data
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    # Every answer carries them: an API's JSON, an error.
    for url in ("/api/roots", "/api/info/foo/nothing"):
        answer = client.get(url)
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Content-Security-Policy"] == csp


@pytest.mark.parametrize(
    "name, mimetype",
    [("app.js", "text/javascript"), ("page.css", "text/css"), ("favicon.svg", "image/svg+xml")],
)
def test_static_files(client, name, mimetype):
    response = client.get(f"/static/{name}")
    assert response.status_code == 200 and response.mimetype == mimetype
    assert response.headers["Cache-Control"] == "no-cache"
    again = client.get(f"/static/{name}", headers={"If-None-Match": response.headers["ETag"]})
    assert again.status_code == 304


@pytest.mark.parametrize(
    "url",
    [
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static//etc/passwd",
        "/static/nope.js",
        "/static/index.html",
        "/static/login.html",
        "/static/app.js/x",
        "/static/",
        "/static/APP.JS",
    ],
)
def test_static_refusals(client, url):
    response = client.get(url)
    assert response.status_code == 404 and response.is_json
    assert response.get_json()["status"] == 404 and response.get_json()["error"]


def test_who_am_i_without_accounts(client):
    assert client.get("/auth/me").get_json() == {"accounts": False, "user": None, "admin": True}


def test_cached_share(client):
    cached = client.get("/api/cached/foo/ds-1d.b2nd").get_json()
    assert cached.keys() == {"path", "etag", "nchunks", "cached_chunks", "cached_bytes", "cbytes"}
    assert cached["path"] == "ds-1d.b2nd" and cached["nchunks"] == 10
    assert 0 <= cached["cached_chunks"] <= 10 and cached["cached_bytes"] <= cached["cbytes"]
    for url, status, message in [
        ("/api/cached/foo/nope", 404, "no dataset 'nope'"),
        ("/api/cached/foo", 400, "expected ROOT/PATH"),
        ("/api/cached/bar/ds-1d.b2nd", 409, "not subscribed"),
        ("/api/cached/nobody/x", 404, "nobody"),
    ]:
        response = client.get(url)
        assert response.status_code == status and message in response.get_json()["error"]


def test_scripts_never_parse_html():
    for name in SCRIPTS:
        text = (Path(web_page.__file__).parent / "static" / name).read_text()
        for sink in SINKS:
            assert sink not in text, (name, sink)


def test_a_wheel_ships_the_page(tmp_path):
    """A non-editable install has the page's files: built as a wheel from a copy of
    the sources, installed into a directory, imported from there."""
    source = tmp_path / "src"
    shutil.copytree(REPO / "catmqtt", source / "catmqtt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.rst"):
        shutil.copy(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", source], check=True
    )
    (wheel,) = (tmp_path / "dist").glob("catmqtt-*.whl")
    shipped = {Path(n).name for n in zipfile.ZipFile(wheel).namelist() if "/static/" in n}
    assert shipped == set(FILES) | {"index.html", "login.html"}
    subprocess.run([*pip, "install", "--no-deps", "--target", tmp_path / "site", wheel], check=True)
    check = "from catmqtt.subscriber import page; print(sorted(page._files()))"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert set(eval(out.stdout)) == shipped


# A real browser

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - said by the browser fixture
    sync_playwright = None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium (Debian's, not one playwright downloads) for the module's tests."""
    if sync_playwright is None:
        pytest.fail("the browser tests need playwright: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"the browser tests need Chromium at {CHROMIUM}: apt-get install chromium")
    expect.set_options(timeout=20_000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class PrefixProxy:
    """A reverse proxy that serves a subscriber under `prefix`, as a site's web server
    would (nginx's ``location /prefix/ { proxy_pass http://sub/; proxy_set_header Host $host; }``)."""

    HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}

    def __init__(self, port: int, prefix: str) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                if not self.path.startswith(prefix + "/"):
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                upstream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                try:
                    upstream.request(self.command, self.path[len(prefix) :], body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                proxy.paths.append(self.path)
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in proxy.HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = forward

            def log_message(self, *args) -> None:
                pass

        self.paths: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{prefix}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="prefix-proxy", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def write_array(path: Path, array: np.ndarray, scratch: Path, **vlmeta) -> None:
    """Write a .b2nd at `path` whole, in one rename, so that the publisher never reads half of it."""
    scratch.mkdir(exist_ok=True)
    temporary = scratch / path.name
    written = blosc2.asarray(array, urlpath=str(temporary), mode="w")
    for key, value in vlmeta.items():
        written.vlmeta[key] = value
    del written
    os.replace(temporary, path)


class Site:
    """Root foo (the sample, plus hostile and changing datasets) published to two
    subscribers: ``open`` without accounts, ``auth`` with (admin root, reader)."""

    def __init__(self, d: Deployment, root: Path, scratch: Path) -> None:
        self.d = d
        self.root = root
        self.scratch = scratch
        self.open = d.url("open")
        self.auth = d.url("auth")


@pytest.fixture(scope="module")
def site(sample_root, tmp_path_factory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("web")
    root = Path(shutil.copytree(sample_root, workdir / "root"))
    scratch = workdir / "scratch"
    (root / f"notes {EVIL}.md").write_text(EVIL_MD)
    (root / "plain.txt").write_text(f"Plain text, not HTML: {EVIL}\n")
    (root / WEIRD).write_text("weird\n")
    write_array(root / "hostile.b2nd", np.arange(5), scratch, **{EVIL_KEY: EVIL + SCRIPT})
    write_array(root / "live.b2nd", np.arange(10, dtype=np.int32), scratch)
    broker = Broker("amqtt", workdir).start()
    d = Deployment(broker, workdir)
    try:
        for name, password in PASSWORDS.items():
            admin = ["--admin"] if name == "root" else []
            added = subprocess.run(
                catmqtt_cmd("user", "add", name, *admin, "--statedir", workdir / "auth"),
                input=password + "\n",
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert added.returncode == 0, added.stderr
        conf = workdir / "auth.yaml"
        conf.write_text("subscriber:\n  auth: true\n")
        d.start_pub("foo", root)
        d.start_sub("open")
        d.start_sub("auth", "--conf", str(conf))
        d.wait_root("foo", key="open")
        requests.post(f"{d.url('open')}/api/subscribe/foo", timeout=30).raise_for_status()
        token = requests.post(
            f"{d.url('auth')}/auth/login",
            json={"username": "root", "password": PASSWORDS["root"]},
            timeout=30,
        ).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}

        def auth_knows_foo():
            return "foo" in requests.get(f"{d.url('auth')}/api/roots", headers=auth, timeout=5).json()

        wait_for(auth_knows_foo, "root foo at the subscriber with accounts")
        requests.post(f"{d.url('auth')}/api/subscribe/foo", headers=auth, timeout=30).raise_for_status()
        yield Site(d, root, scratch)
    finally:
        d.stop_all()
        broker.stop()


@pytest.fixture
def page(browser):
    """A fresh browser context (no cookies) and its page; `page.problems` collects
    script errors and console errors (a refused Content-Security-Policy among them)."""
    context = browser.new_context()
    opened = context.new_page()
    opened.problems = []
    opened.on("pageerror", lambda exc: opened.problems.append(str(exc)))
    opened.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))
    yield opened
    context.close()


def show(page, url: str, path: str) -> None:
    """Open the page at `url` showing dataset foo/`path`, and wait for its metadata."""
    page.goto(f"{url}#foo/{path}")
    expect(page.locator("h2.path")).to_have_text(f"foo/{path}")
    expect(page.locator("table.meta")).to_be_visible()


def cell(page, row: int, column: int):
    return page.locator("table.data tbody tr").nth(row).locator("td").nth(column)


def header(page):
    return page.locator("table.data thead th")


def ink(page) -> int:
    """Return how many pixels of the plot are not near white."""
    return page.locator("canvas.plot").evaluate(
        """canvas => {
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (data[i] < 200 || data[i + 1] < 200 || data[i + 2] < 200) n++;
            }
            return n;
        }"""
    )


def test_roots_tree_and_filter(site, page):
    page.goto(site.open)
    root = page.locator("#roots li.root")
    expect(root).to_have_count(1)
    expect(root).to_contain_text("foo")
    expect(root).to_contain_text("online")
    expect(root).to_contain_text("subscribed")
    # Without accounts everyone may (un)subscribe.
    expect(root.locator("button")).to_have_text("Unsubscribe")
    links = page.locator("#tree a.dataset")
    expect(links.filter(has_text="ds-4d.b2nd")).to_have_count(1)
    total = links.count()
    assert total >= 14
    page.locator("#filter").fill("2D")
    expect(links).to_have_text(["ds-2d.b2nd", "ds-2d-fields.b2nd"])
    page.locator("#filter").fill("no such dataset")
    expect(page.locator("#tree")).to_contain_text("No dataset matches")
    page.locator("#filter").fill("")
    expect(links).to_have_count(total)
    page.locator("#tree a.dataset", has_text="ds-1d.b2nd").first.click()
    expect(page.locator("h2.path")).to_have_text("foo/ds-1d.b2nd")
    assert page.url.endswith("#foo/ds-1d.b2nd")
    assert page.problems == []


def test_metadata_1d_table_plot_and_cache(site, page):
    show(page, site.open, "ds-1d.b2nd")
    meta = page.locator("table.meta")
    expect(meta.locator("tr", has_text="shape")).to_contain_text("[1000]")
    expect(meta.locator("tr", has_text="dtype")).to_contain_text("int64")
    expect(page.locator("#vlmeta")).to_contain_text("None.")
    download = page.locator("a.download")
    assert download.get_attribute("href") == "api/download/foo/ds-1d.b2nd"
    expect(page.locator("code.slice")).to_have_text("[0:1000]")
    expect(page.locator("table.data tbody tr")).to_have_count(100)
    expect(cell(page, 7, 0)).to_have_text("7")
    page.get_by_role("button", name="rows ▶").click()
    expect(page.locator("table.data tbody th").first).to_have_text("100")
    expect(cell(page, 0, 0)).to_have_text("100")
    page.get_by_label("axis 0", exact=True).fill("995")
    page.get_by_label("axis 0", exact=True).press("Enter")
    expect(page.locator("table.data tbody tr")).to_have_count(5)
    expect(cell(page, 4, 0)).to_have_text("999")
    expect(page.locator("canvas.plot")).to_be_visible()
    assert ink(page) > 100
    # What was read is cached: every chunk by now (the plot read from 0 to 1000).
    expect(page.locator("#cached")).to_contain_text("10 of 10 chunks")
    assert page.problems == []


def test_2d_table_image_and_axes(site, page):
    show(page, site.open, "dir1/ds-2d.b2nd")
    expect(header(page)).to_have_count(21)
    expect(header(page).nth(5)).to_have_text("4")
    expect(cell(page, 3, 4)).to_have_text("64")
    expect(page.locator(".plot-box")).to_contain_text("an image")
    assert ink(page) > 1000
    # Rows along axis 1: the table is transposed.
    page.get_by_label("rows axis").select_option("1")
    expect(page.locator("code.slice")).to_have_text("[0:10,0:20]")
    expect(page.locator("table.data tbody tr")).to_have_count(20)
    expect(cell(page, 4, 3)).to_have_text("64")


def test_3d_cut(site, page):
    show(page, site.open, "dir1/ds-3d.b2nd")
    expect(page.locator("code.slice")).to_have_text("[0,0:4,0:5]")
    expect(cell(page, 1, 2)).to_have_text("7")
    page.get_by_label("axis 0 slider").fill("2")
    expect(page.locator("code.slice")).to_have_text("[2,0:4,0:5]")
    expect(cell(page, 0, 0)).to_have_text("40")
    assert ink(page) > 1000
    show(page, site.open, "dir2/ds-4d.b2nd")
    expect(page.locator("code.slice")).to_have_text("[0,0,0:4,0:5]")
    expect(cell(page, 1, 1)).to_have_text("6+6j")
    expect(page.locator(".plot-box")).to_contain_text("magnitude")


def test_records_as_columns(site, page):
    show(page, site.open, "ds-1d-fields.b2nd")
    expect(header(page)).to_have_text(["axis 0", "a", "b", "c", "d"])
    row = page.locator("table.data tbody tr").nth(3)
    expect(row.locator("td")).to_have_text(["3", re.compile(r"0\.003003"), "b'rec3'", "True"])
    expect(page.locator(".plot-box")).to_contain_text("field a")
    page.locator("select.field").select_option("c")
    expect(header(page)).to_have_text(["axis 0", "value"])
    expect(cell(page, 3, 0)).to_have_text("b'rec3'")
    expect(page.locator(".plot-box")).to_contain_text("not numbers")
    show(page, site.open, "ds-2d-fields.b2nd")
    expect(header(page)).to_have_text(["axis 0", "a", "b"])
    expect(page.locator("code.slice")).to_have_text("[0:100,0]")
    page.locator("select.field").select_option("b")
    expect(page.locator("code.slice")).to_have_text(re.compile(r"^\[0:100,0:200\]$"))
    expect(cell(page, 1, 2)).to_have_text("202")
    assert ink(page) > 1000


def test_text_markdown_and_scalars(site, page):
    show(page, site.open, "README.md")
    markdown = page.locator(".markdown")
    expect(markdown.locator("h1")).to_have_text("The catmqtt sample root")
    expect(markdown.locator("li")).to_have_count(5)
    expect(markdown.locator("li code").first).to_have_text("ds-hello.b2frame")
    page.get_by_label("Show the Markdown source").check()
    expect(page.locator("pre.text")).to_contain_text("# The catmqtt sample root")
    show(page, site.open, "ds-hello.b2frame")
    expect(page.locator("pre.text")).to_contain_text("Hello world!Hello world!")
    show(page, site.open, "ds-sc-attr.b2nd")
    expect(page.locator("p.scalar")).to_have_text("Value: foobar")
    vlmeta = page.locator("table.vlmeta")
    expect(vlmeta.locator("tr")).to_have_count(3)
    expect(vlmeta.locator("tr", has_text="c")).to_contain_text("123.456")
    assert page.problems == []


def test_hostile_content_stays_text(site, page):
    name = f"notes {EVIL}.md"
    page.goto(site.open)
    expect(page.locator("#tree a.dataset", has_text=name)).to_have_count(1)
    page.locator("#tree a.dataset", has_text=name).click()
    expect(page.locator("h2.path")).to_have_text(f"foo/{name}")
    markdown = page.locator(".markdown")
    expect(markdown.locator("h1")).to_have_text("Hostile notes")
    expect(markdown).to_contain_text("<script>window.pwned = 1</script>")
    expect(markdown).to_contain_text(f"{EVIL} and <b>not bold</b>")
    expect(markdown.locator("strong")).to_have_text("strong")
    expect(markdown.locator("code")).to_have_text("code <i>")
    # Only the https link is a link.
    expect(markdown.locator("a")).to_have_count(1)
    assert markdown.locator("a").get_attribute("href") == "https://example.org/docs"
    expect(markdown).to_contain_text("a script link")
    show(page, site.open, "hostile.b2nd")
    vlmeta = page.locator("table.vlmeta")
    expect(vlmeta.locator("th")).to_have_text(EVIL_KEY)
    expect(vlmeta.locator("td")).to_have_text(EVIL + SCRIPT)
    page.locator("#tree a.dataset", has_text=WEIRD).click()
    expect(page.locator("h2.path")).to_have_text(f"foo/{WEIRD}")
    expect(page.locator("pre.text")).to_have_text("weird\n")
    expect(page.locator("#cached")).to_contain_text("1 of 1 chunks")
    show(page, site.open, "plain.txt")
    expect(page.locator("pre.text")).to_have_text(f"Plain text, not HTML: {EVIL}\n")
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("img, script:not([src]), b, i").count() == 0
    assert page.problems == []


LINK = '<a href="{}" rel="noopener noreferrer nofollow" target="_blank">{}</a>'


# Markdown, and the HTML the page's renderer builds of it.
MARKDOWN = [
    ("# T", "<h1>T</h1>"),
    (
        "a *b* **c** `d` _e_ __f__",
        "<p>a <em>b</em> <strong>c</strong> <code>d</code> <em>e</em> <strong>f</strong></p>",
    ),
    ("snake_case_name and x ** y ** z", "<p>snake_case_name and x ** y ** z</p>"),
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("`<b>` \\*not em\\*", "<p><code>&lt;b&gt;</code> *not em*</p>"),
    ("```\n<b>x</b>\n```", "<pre><code>&lt;b&gt;x&lt;/b&gt;</code></pre>"),
    ("    code\n    more", "<pre><code>code\nmore</code></pre>"),
    ("- a\n- b\n  - c", "<ul><li>a</li><li><p>b</p><ul><li>c</li></ul></li></ul>"),
    ("1. one\n2. two", "<ol><li>one</li><li>two</li></ol>"),
    ("> quote", "<blockquote><p>quote</p></blockquote>"),
    ("a\n\n***\n\nb", "<p>a</p><hr><p>b</p>"),
    (
        "[x](HTTPS://Example.org/a?b=1&c=2)",
        f"<p>{LINK.format('https://example.org/a?b=1&amp;c=2', 'x')}</p>",
    ),
    ('[x](https://x.org/(a) "title")', f"<p>{LINK.format('https://x.org/(a)', 'x')}</p>"),
    ("<http://x.org>", f"<p>{LINK.format('http://x.org/', 'http://x.org')}</p>"),
    ("![alt](https://x.org/i.png)", f"<p>{LINK.format('https://x.org/i.png', 'image: alt')}</p>"),
    # Links to anything but http and https are text.
    ("[x](javascript:alert(1))", "<p><span>x</span></p>"),
    ("[x]( JavaScript:alert(1))", "<p><span>x</span></p>"),
    ("[x](data:text/html,<script>alert(1)</script>)", "<p><span>x</span></p>"),
    ("[x](//evil.example/)", "<p><span>x</span></p>"),
    ("[x](/relative)", "<p><span>x</span></p>"),
    ("<javascript:alert(1)>", "<p>&lt;javascript:alert(1)&gt;</p>"),
]


def test_markdown_renderer(site, page):
    page.goto(site.open)
    texts = [markdown for markdown, _ in MARKDOWN]
    assert dict(zip(texts, render_markdown(page, texts), strict=True)) == dict(MARKDOWN)


def render_markdown(page, texts: list[str]) -> list[str]:
    """Render `texts` with the page's renderer, and return the HTML of what it built."""
    return page.evaluate(
        """async (texts) => {
            const module = await import(new URL("static/markdown.js", document.baseURI).href);
            return texts.map((text) => {
                const box = document.createElement("div");
                box.append(module.renderMarkdown(text));
                return box.innerHTML;
            });
        }""",
        texts,
    )


def test_markdown_renderer_bounds_hostile_input(site, page):
    """Deep nesting and marks that never close: rendered as text, in bounded work."""
    page.goto(site.open)
    texts = [
        ">" * 10_000 + " deep",
        "[" * 100_000,
        "[" * 50_000 + "](" * 50_000,
        "*a [b `c " * 20_000,
        "\n".join(" " * (2 * i) + "- x" for i in range(500)),
        "_" * 100_000 + "x",
    ]
    rendered = render_markdown(page, texts)
    assert rendered[0].count("<blockquote>") <= 12 and "deep" in rendered[0]
    assert all("<a" not in html for html in rendered)


def test_changes_at_the_publisher_show_up(site, page):
    show(page, site.open, "live.b2nd")
    expect(cell(page, 9, 0)).to_have_text("9")
    write_array(site.root / "live.b2nd", np.arange(100, 112, dtype=np.int32), site.scratch)
    expect(cell(page, 0, 0)).to_have_text("100")
    expect(page.locator("table.data tbody tr")).to_have_count(12)
    expect(page.locator("table.meta tr", has_text="shape")).to_contain_text("[12]")
    expect(page.locator("#dataset-status")).to_contain_text("Updated at")
    # A new dataset joins the tree; a withdrawn one is said so.
    (site.root / "fresh.txt").write_text("fresh\n")
    expect(page.locator("#tree a.dataset", has_text="fresh.txt")).to_have_count(1)
    (site.root / "live.b2nd").unlink()
    expect(page.locator("#dataset-status")).to_contain_text("No longer available")
    expect(page.locator("#tree a.dataset", has_text="live.b2nd")).to_have_count(0)


def login(page, name: str, password: str) -> None:
    page.get_by_label("User").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


def test_login_and_subscriptions(site, page):
    page.goto(site.auth)
    expect(page).to_have_url(f"{site.auth}/auth/login")
    login(page, "reader", "wrong")
    expect(page.locator("#login-error")).to_have_text("Cannot log in: wrong user name or password")
    login(page, "reader", PASSWORDS["reader"])
    expect(page).to_have_url(f"{site.auth}/")
    expect(page.locator("#who")).to_have_text("reader")
    root = page.locator("#roots li.root")
    expect(root).to_contain_text("subscribed")
    expect(page.locator("#tree a.dataset", has_text="ds-4d.b2nd")).to_have_count(1)
    # A reader gets no buttons to change what the subscriber keeps.
    expect(root.locator("button")).to_have_count(0)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(f"{site.auth}/auth/login")
    page.goto(site.auth)
    expect(page).to_have_url(f"{site.auth}/auth/login")

    login(page, "root", PASSWORDS["root"])
    expect(page.locator("#who")).to_have_text("root (admin)")
    root.get_by_role("button", name="Unsubscribe").click()
    expect(root).to_contain_text("not subscribed")
    expect(page.locator("#tree")).to_contain_text("Subscribe to a root")
    root.get_by_role("button", name="Subscribe").click()
    expect(root.locator(".badge.subscribed")).to_have_text("subscribed")
    expect(page.locator("#tree a.dataset", has_text="ds-4d.b2nd")).to_have_count(1)
    show(page, site.auth, "dir1/ds-2d.b2nd")
    expect(cell(page, 3, 4)).to_have_text("64")


def test_too_many_failed_logins(site, page):
    page.goto(f"{site.auth}/auth/login")
    # The subscriber's defaults: 5 failures of a name from an address in 15 min.
    for _ in range(5):
        with page.expect_response(lambda r: r.request.method == "POST") as sent:
            login(page, "mallory", "a guess")
        assert sent.value.status == 401
    login(page, "mallory", "another guess")
    expect(page.locator("#login-error")).to_have_text("Too many failed logins; try again in 15 min.")


def test_behind_a_path_prefix(site, page):
    proxy = PrefixProxy(site.d.ports["open"], "/catmqtt")
    try:
        page.goto(proxy.url)
        expect(page.locator("#roots li.root")).to_contain_text("foo")
        show(page, proxy.url, "dir1/ds-2d.b2nd")
        expect(cell(page, 3, 4)).to_have_text("64")
        assert (
            page.locator("a.download").evaluate("a => a.href")
            == f"{proxy.url}api/download/foo/dir1/ds-2d.b2nd"
        )
        # A change goes through it too (Origin and Host are the proxy's).
        root = page.locator("#roots li.root")
        root.get_by_role("button", name="Unsubscribe").click()
        expect(root).to_contain_text("not subscribed")
        root.get_by_role("button", name="Subscribe").click()
        expect(root.locator(".badge.subscribed")).to_have_text("subscribed")
        assert proxy.paths and all(path.startswith("/catmqtt/") for path in proxy.paths)
        assert any(path.startswith("/catmqtt/api/fetch/") for path in proxy.paths)
        assert page.problems == []
    finally:
        proxy.stop()
