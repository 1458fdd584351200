# .venv/bin/python -m pytest tests/test_setup_env.py -q
"""scripts/setup_env.sh installs the CUDA build of the pinned torch where an NVIDIA driver is, and leaves this CPU
machine's path (the local CPU wheel through pip's find-links) as it was. Its --dry-run prints the pip commands
without running them; the driver is simulated by a fake nvidia-smi on PATH (no GPU on the test machine)."""

import os
import subprocess
from pathlib import Path

import pytest

from trainer_core.common.paths import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "setup_env.sh"


def dry_run(tmp_path: Path, nvidia_smi: str | None) -> str:
    env = dict(os.environ)
    if nvidia_smi is not None:
        fake = tmp_path / "bin" / "nvidia-smi"
        fake.parent.mkdir()
        fake.write_text(nvidia_smi)
        fake.chmod(0o755)
        env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_a_gpu_machine_gets_the_cuda_build_not_a_cpu_wheel_from_find_links(tmp_path):
    out = dry_run(tmp_path, '#!/bin/sh\necho "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-0)"\n')
    lines = out.splitlines()
    torch_line = next(x for x in lines if "torch==2.13.0" in x)
    # pip's config files (find-links /opt/wheels holds torch-2.13.0+cpu) and PIP_FIND_LINKS are left out.
    assert "PIP_CONFIG_FILE=/dev/null" in torch_line and "-u PIP_FIND_LINKS" in torch_line
    assert "--index-url https://pypi.org/simple" in torch_line
    assert lines.index(torch_line) < next(i for i, x in enumerate(lines) if "-r requirements.txt" in x)
    assert "torch.version.cuda" in lines[-1]  # and a CPU build that slipped through is said, not used


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA driver")
def test_a_cpu_machine_keeps_its_path(tmp_path):
    """No driver (here: nvidia-smi present but failing, as on a box without the kernel module)."""
    out = dry_run(tmp_path, "#!/bin/sh\nexit 9\n")
    assert "torch==" not in out and "PIP_CONFIG_FILE" not in out
    assert out.splitlines()[-1].endswith("-r requirements.txt ")
