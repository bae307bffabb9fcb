"""`parity report` writes PNG histograms and one self-contained HTML page."""

import base64
import re

import torch

from parity.tools.cli import main

KERNEL = """
import torch


def rounds_intermediate(x, *, limit=None, alpha=1.0, beta=0.0, layout="concat",
                        clamp_mode="pre"):
    n = x.shape[-1] // 2
    g, u = (x[..., :n], x[..., n:]) if layout == "concat" else (x[..., 0::2], x[..., 1::2])
    g, u = g.float(), u.float()
    if limit is not None:
        g, u = g.clamp(max=limit), u.clamp(-limit, limit)
    act = (g * torch.sigmoid(alpha * g)).to(x.dtype).float()  # the unfused two-kernel rounding
    return (act * (u + beta)).to(x.dtype)
"""


def test_report_files_and_html(tmp_path, monkeypatch, capsys):
    (tmp_path / "rep_kernel.py").write_text(KERNEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "report"
    rc = main(
        [
            "report",
            "--op",
            "swiglu",
            "--impl",
            "reference",
            "--impl",
            "rep_kernel:rounds_intermediate",
            "--examples",
            "5",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert pngs, list(out.iterdir())
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    page = (out / "index.html").read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    # every PNG is embedded (no external file needed to view the page)
    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(embedded) == len(pngs)
    assert {base64.b64decode(b) for b in embedded} == {p.read_bytes() for p in pngs}
    assert "swiglu" in page and "rep_kernel:rounds_intermediate" in page
    assert "reference" in page and "Tolerance model" in page and "p99 ulp" in page
    # the tolerance used, with its numbers for the dtypes measured (parity explain's)
    assert "tolerance numbers for" in page and "parity explain swiglu --dtype" in page
    assert "16 u32 |y| at |y| = 1" in page


def test_report_usage_errors(tmp_path):
    assert main(["report", "--op", "no_such_op", "--out", str(tmp_path)]) == 2
    assert (
        main(["report", "--op", "swiglu", "--impl", "missing_mod:f", "--out", str(tmp_path)]) == 2
    )
    assert main(["report", "--op", "swiglu", "--examples", "0", "--out", str(tmp_path)]) == 2


def test_report_without_matplotlib_names_the_extra_before_any_work(tmp_path):
    """No matplotlib: exit 2 at once, naming the extra to install; nothing measured or written
    (not a traceback after all the work)."""
    import subprocess
    import sys

    out = tmp_path / "never"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from parity.tools.cli import main\n"
        f"sys.exit(main(['report', '--op', 'fused_moe', '--examples', '50', '--device', 'cpu', "
        f"'--out', {str(out)!r}]))\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert p.returncode == 2, p.stderr
    assert "pip install 'parity[report]'" in p.stderr and "matplotlib" in p.stderr
    assert "Traceback" not in p.stderr and "fused_moe:" not in p.stdout  # no measuring began
    assert not out.exists()


def test_ulp_of_covers_float8():
    from parity.properties.case import ulp as ulp_of

    x = torch.tensor([1.0, 448.0, 0.0], dtype=torch.float64)
    assert ulp_of(x, torch.float8_e4m3fn).tolist() == [0.125, 32.0, 2.0**-9]
    assert ulp_of(x, torch.bfloat16)[0].item() == 2.0**-7
