"""The API process must not pull in workers/ or torch."""

import subprocess
import sys


def test_api_never_imports_torch_or_workers():
    code = (
        "import sys, api.app, api.routes.jobs;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'workers', 'transformers'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
