"""The HTML report in a real browser: headless Chromium renders its sections and decodes its images."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from inspector.cli import cli
from test_report import station, write_cv_result  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make test installs it via "
                                                         "scripts/install-test-tools.sh when apt is reachable)")
PROBE = """<script>
window.addEventListener('load', () => {
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = Array.from(document.images).map(i => i.alt + '=' + i.naturalWidth + 'x' + i.naturalHeight).join('\\n');
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(station, repo_root):  # noqa: F811
    tmp_path, cfg, shas, files = station
    write_cv_result(cfg.state.dir, tmp_path)
    result = CliRunner().invoke(cli, ["export", "--format", "html", "--out", "report.html", "--config",
                                      str(tmp_path / "config.toml")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report.html").read_text()
    probed = tmp_path / "probed.html"  # the test's copy gets a probe script; the report itself has none
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for section in ("totals", "trends", "flagged", "cv", "model"):
        assert re.search(rf'<h2 id="{section}">', dom.stdout), section
    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert probe, dom.stdout[-2000:]
    sizes = dict(line.rsplit("=", 1) for line in probe.group(1).strip().splitlines())
    trends = ("pass rate per day", "distribution of P(abnormal) per week", "Pareto of anomaly types",
              "share of verdicts overturned per week")
    assert len(sizes) == 5 + len(trends), sizes  # the flagged scans' pictures, the cv's plots and the trends
    assert all(sizes[name] == "630x270" for name in trends), sizes
    assert all(not s.startswith("0x") for s in sizes.values()), sizes  # every image decoded
    assert sizes["ROC curve"] == "405x405"
    # the escaped file name rendered as text, not run as markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.tif" in dom.stdout

    artifacts = repo_root / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    done = chromium(tmp_path, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,2000",
                    (tmp_path / "report.html").as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
