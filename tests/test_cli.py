"""The `vsr` command discovers subcommands from every installed package."""

import json
import subprocess
import sys


def test_vsr_index_info_reports_version_and_simd():
    out = subprocess.run(
        [sys.executable, "-m", "vsr_index.cli", "index", "info"], check=True, capture_output=True, text=True
    ).stdout
    info = json.loads(out)
    import vsr_index

    assert info["version"] == vsr_index.__version__
    assert info["simd"]["selected"] in info["simd"]["available"]


def test_package_versions_and_dependency_direction():
    import vsr_index

    assert vsr_index.__version__
    # vsr_index must never pull in torch.
    code = "import sys, vsr_index; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"
