"""Open an HTML file in real headless Chromium, as a person would: a screenshot, the DOM after the
page's scripts ran, and where things landed on the page.

Why a measuring copy: ``--dump-dom`` gives the DOM but not the layout. A copy of the page gets one
extra script that, after load, writes the bounding boxes of the elements asked for into a
``data-layout`` attribute, which the dump then carries. The original file is never touched.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
         "--hide-scrollbars", "--virtual-time-budget=5000")

_MEASURE = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const box = (el) => { if (!el) return null; const b = el.getBoundingClientRect();
    const s = getComputedStyle(el);
    return {top: b.top + window.scrollY, height: b.height, width: b.width,
            visible: b.height > 0 && b.width > 0 && s.visibility !== 'hidden' && s.display !== 'none',
            text: el.innerText}; };
  const out = {};
  for (const [name, sel] of Object.entries(%s)) {
    out[name] = [...document.querySelectorAll(sel)].map((el) => {
      const b = box(el);
      if (el.tagName === 'IMG') { b.natural = el.naturalWidth; }
      if (el.tagName === 'A') { b.href = el.getAttribute('href'); }
      if (el.dataset && el.dataset.check) { b.check = el.dataset.check; }
      return b; });
  }
  document.body.setAttribute('data-layout', JSON.stringify(out));
}, 0));
</script>
"""


@dataclass
class Rendered:
    dom: str
    screenshot: Path
    layout: dict[str, list[dict[str, Any]]]


def available() -> bool:
    return CHROMIUM.exists()


def _chromium(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    profile = tempfile.mkdtemp(prefix="poc1-chromium-")  # a fresh profile every time
    try:
        return subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def render(page: Path, workdir: Path, selectors: dict[str, str], width: int = 1400,
           height: int = 2600) -> Rendered:
    """Screenshot ``page`` and return its DOM and the boxes of ``selectors`` (name -> CSS selector)."""
    shot = workdir / f"{page.stem}.screenshot.png"
    res = _chromium([f"--window-size={width},{height}", f"--screenshot={shot}", page.resolve().as_uri()])
    if not shot.is_file():
        raise AssertionError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-500:]}")
    # the measuring copy sits beside the original, so relative links resolve the same way
    probe = page.with_name(f".{page.stem}.measure.html")
    html = page.read_text(encoding="utf-8")
    probe.write_text(html.replace("</body>", _MEASURE % json.dumps(selectors) + "</body>"), encoding="utf-8")
    try:
        dom = _chromium(["--dump-dom", probe.resolve().as_uri()]).stdout
    finally:
        probe.unlink(missing_ok=True)
    match = re.search(r'data-layout="([^"]*)"', dom)
    if not match:
        raise AssertionError("the page's layout was not measured (did the page load?)")
    import html as html_lib

    return Rendered(dom=dom, screenshot=shot, layout=json.loads(html_lib.unescape(match.group(1))))
