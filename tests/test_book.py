"""The book: generated pages in sync, a warning-free Jupyter Book build of a copy of
the book, no broken local images or links, Colab launch links on the section pages, and the
front page and a results page rendered by headless Chromium."""
from __future__ import annotations

import html.parser
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from tinytrace.report import pages
from tinytrace.report.sections import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLAB = "https://colab.research.google.com/github/tinytrace/tinytrace/blob/main/notebooks/"


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_config_keeps_the_required_keys():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["execute"]["execute_notebooks"] == "off"
    assert cfg["repository"]["url"] == "https://github.com/tinytrace/tinytrace"
    assert cfg["repository"]["path_to_book"] in ("", ".") and cfg["repository"]["branch"] == "main"
    # no theme launch button: it opens the executed copy, whose injected parameters override
    assert "colab_url" not in cfg.get("launch_buttons", {})
    assert {".venv", "_build", "notebooks", "cache"} <= set(cfg["exclude_patterns"])
    files = _toc_files()
    assert [f"book/sections/{s}" for s in NOTEBOOKS] == [f for f in files if "/sections/" in f]
    for page in ("book/intro", "book/reproducing", "book/datasets", "book/results"):
        assert page in files


def test_citation_cff():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert {"title", "authors", "message", "repository-code", "license"} <= set(cff)
    kinds = {r["type"] for r in cff["references"]}
    assert {"article", "data"} <= kinds
    assert any("Minimalist Approach" in r["title"] for r in cff["references"])


def test_generated_pages_are_in_sync():
    """book/results.md (from book/sections/*.json), book/datasets.md (from data/tinytracing)
    and the scales table of book/reproducing.md (from scale_table()) match their sources:
    regenerate them with `tinytrace notebooks pages`."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        stale = pages.write_pages("book", check=True)
    finally:
        os.chdir(cwd)
    assert not stale, f"out of date (run `tinytrace notebooks pages`): {stale}"


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.refs.append(("img", a["src"]))
        elif tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))
        elif tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.refs.append((tag, a.get("src") or a.get("href")))


def _broken_local_refs(html_dir: Path) -> list[str]:
    broken = []
    for page in html_dir.rglob("*.html"):
        if "_static" in page.relative_to(html_dir).parts:  # theme templates, not pages
            continue
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        for tag, ref in parser.refs:
            u = urlparse(ref)
            if u.scheme or u.netloc or ref.startswith(("#", "mailto:", "javascript:", "data:")):
                continue
            target = (page.parent / unquote(u.path)).resolve() if u.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(html_dir)}: <{tag}> {ref}")
    return broken


@pytest.fixture(scope="module")
def built_book(tmp_path_factory):
    """The book built from a copy of the repository's book files (the tree stays clean)."""
    src = tmp_path_factory.mktemp("book_src")
    for name in ("_config.yml", "_toc.yml", "README.md"):  # book/reading.md includes the README
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "book", src / "book",
                    ignore=shutil.ignore_patterns(".*", "__pycache__"))
    missing = [f for f in _toc_files() if not list(src.glob(f + ".*"))]
    if missing:  # a checkout without executed notebooks: make them at smoke scale
        sections = src / "book" / "sections"
        proc = subprocess.run([sys.executable, "-m", "tinytrace", "notebooks", "run", "--scale",
                               "smoke", "--out", str(sections), "--cache-dir", str(src / "cache"),
                               "--jobs", "2"], capture_output=True, text=True, cwd=ROOT,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pages.write_pages(src / "book", sections, ROOT / "data" / "tinytracing")
        shutil.rmtree(src / "cache")
    proc = subprocess.run([str(BIN / "jupyter-book"), "build", str(src), "-W", "-n", "--keep-going"],
                          capture_output=True, text=True, timeout=900)
    return src / "_build" / "html", proc


def test_book_builds_without_warnings(built_book):
    html_dir, proc = built_book
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "WARNING" not in log and "ERROR" not in log, log[-5000:]
    for f in _toc_files():
        assert (html_dir / f"{f}.html").exists(), f


def test_the_reading_page_is_the_readme_account_of_the_committed_book(built_book):
    html_dir, _ = built_book
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- book-reading:start -->")
    assert start < readme.index("<!-- book-reading:end -->")
    page = (html_dir / "book" / "reading.html").read_text()
    assert "The committed book is at" in page and "Both create" not in page
    # the whole block: its last sentence in, the paragraph before the start marker out
    assert "now reads only the runs with injected depths." in page
    assert "scale trains a 0.2M-parameter model" not in page


def test_no_broken_local_images_or_links(built_book):
    html_dir, _ = built_book
    assert not _broken_local_refs(html_dir)
    # the figures of the executed notebooks made it into the HTML
    section = (html_dir / "book" / "sections" / "03_id_robustness.html").read_text()
    assert "<img" in section and ".png" in section
    # the failure classification figure of 05, after its heading (also without a browser)
    article = (html_dir / "book" / "sections" / "05_ood.html").read_text().split("<article", 1)[-1]
    after = article.split("Where the model fails", 1)
    assert len(after) == 2 and "<img" in after[1].split("</section>", 1)[0], "no failure figure"


def test_colab_launch_links(built_book):
    """Each section page links its source notebook (no outputs, no injected parameters) in
    Colab, and nothing opens the executed copy there."""
    html_dir, _ = built_book
    for stem in NOTEBOOKS:
        page = (html_dir / "book" / "sections" / f"{stem}.html").read_text()
        assert f"{COLAB}{stem}.ipynb" in page, f"no Colab link on {stem}"
        assert "colab.research.google.com/github/tinytrace/tinytrace/blob/main/book/" not in page


def _chrome(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed")
def test_pages_render_in_headless_chromium(built_book, tmp_path):
    html_dir, proc = built_book
    assert proc.returncode == 0
    for name, page in (("front", html_dir / "book" / "intro.html"),
                       ("results", html_dir / "book" / "results.html"),
                       ("ood", html_dir / "book" / "sections" / "05_ood.html")):
        png = tmp_path / f"{name}.png"
        r = _chrome([f"--screenshot={png}", "--window-size=1280,1600", "--hide-scrollbars",
                     page.as_uri()], tmp_path / f"profile-{name}")
        assert png.exists() and png.stat().st_size > 20_000, r.stderr[-2000:]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the DOM after scripts ran: the section page still carries its Colab link
    page = html_dir / "book" / "sections" / "05_ood.html"
    r = _chrome(["--dump-dom", page.as_uri()], tmp_path / "profile-dom")
    assert f"{COLAB}05_ood.ipynb" in r.stdout, r.stderr[-2000:]
    assert "Out-of-distribution generalization" in r.stdout
    # the failure classification figure is there, after its heading, as a rendered image
    article = r.stdout.split("<article", 1)[-1]  # the page's own text, not the sidebar's contents
    after = article.split("Where the model fails", 1)
    assert len(after) == 2 and "<img" in after[1].split("</section>", 1)[0], "no failure figure"
    r = _chrome(["--dump-dom", (html_dir / "book" / "results.html").as_uri()], tmp_path / "profile-res")
    assert "verdict" in r.stdout and "not comparable at this scale" in r.stdout
