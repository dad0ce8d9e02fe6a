"""The kernels package's names load on first use: its light modules import without torch."""

import subprocess
import sys


def test_light_modules_import_without_torch_and_attention_stays_the_entry_point() -> None:
    # the server checks engine settings (backend names, the cascade rule) without torch; the
    # submodule `attention`, imported directly, must not replace the function of its name
    probe = """
import sys
import server.kernels.backend_names, server.kernels.cascade_config
print('torch' in sys.modules)
import server.kernels.attention
from server.kernels import CascadeConfig, attention, cpu
print(callable(attention), CascadeConfig.__module__, cpu.__name__)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.split() == [
        "False",
        "True",
        "server.kernels.cascade_config",
        "server.kernels.cpu",
    ], out.stdout + out.stderr
