"""One-command setup: ``python -m amhelpers.setup`` from the repository root.

Installs the system tools (espeak-ng, sox, an Ethiopic font) with apt-get when they are
missing and apt-get can run, otherwise prints which packages to install; then installs
torch 2.13.0 (never asking pip for a CUDA build when a CPU wheel is at hand) and this
package (JupyterLab included) with its dev extras into the running Python. Runs without
importing anything beyond the standard library, so it works before the package is installed
(also in Colab, where the notebooks' first cell runs it).

Exit status: 0 done; 1 installed, but system packages are still missing (named on stderr);
2 pip failed or is missing (one line on stderr names the command and what to do).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

APT_PACKAGES = {"espeak-ng": "espeak-ng", "sox": "sox", "fonts-sil-abyssinica": None}
TORCH = "torch==2.13.0"
INDEXTTS = "indextts2-inference"
ROOT = Path(__file__).resolve().parent.parent


def _font_installed() -> bool:
    if shutil.which("fc-list"):
        out = subprocess.run(["fc-list"], capture_output=True, text=True).stdout
        return "Abyssinica" in out
    return Path("/usr/share/fonts/truetype/abyssinica").exists()


def missing_system_packages() -> list[str]:
    """Return the Debian packages whose tools are not on this machine."""
    missing = [pkg for pkg, binary in APT_PACKAGES.items() if binary and not shutil.which(binary)]
    if not _font_installed():
        missing.append("fonts-sil-abyssinica")
    return missing


def install_system(missing: list[str]) -> bool:
    """Install Debian packages with apt-get when possible. Returns True on success."""
    if not missing:
        return True
    apt = shutil.which("apt-get")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    sudo = [] if root else (["sudo", "-n"] if shutil.which("sudo") else None)
    if apt is None or sudo is None:
        print(f"setup: please install these system packages: {' '.join(missing)}\n"
              f"  Debian/Ubuntu: sudo apt-get install -y {' '.join(missing)}\n"
              f"  conda: conda env create -f environment.yml (espeak-ng and sox from conda-forge)",
              file=sys.stderr)
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    ok = subprocess.run([*sudo, apt, "update", "-qq"], env=env).returncode == 0
    ok = ok and subprocess.run([*sudo, apt, "install", "-y", "-qq", "--no-install-recommends",
                                *missing], env=env).returncode == 0
    if not ok:
        print(f"setup: apt-get could not install {' '.join(missing)}; install them by hand",
              file=sys.stderr)
    return ok


class SetupError(RuntimeError):
    """A setup step failed; the message says which and what to do."""


def pip(*args: str) -> None:
    """Run ``pip install`` of the current interpreter; its output is shown as it comes.

    Raises:
        SetupError: pip is missing, or it failed (the message names the command and the fix).
    """
    if importlib.util.find_spec("pip") is None:
        raise SetupError(f"pip is not installed in {sys.executable}: run "
                         f"`{sys.executable} -m ensurepip --upgrade` (or make the virtual "
                         "environment without --without-pip), then rerun `python -m amhelpers.setup`")
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *args]
    print("setup:", " ".join(cmd[2:]), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SetupError(f"`{' '.join(cmd)}` failed (exit {code}; pip's message is above): check "
                         "the network connection or proxy (pip must reach the package index, or "
                         "set PIP_INDEX_URL to a mirror) and free disk space, then rerun "
                         "`python -m amhelpers.setup`")


def torch_ok() -> bool:
    """Return True when a torch >= 2.1 is importable."""
    probe = "import torch, sys; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> int:
    """Set up system tools, torch and the package. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m amhelpers.setup", description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="dev", help="package extras to install (e.g. dev,indextts)")
    parser.add_argument("--no-system", action="store_true", help="skip apt-get")
    args = parser.parse_args(argv)

    missing = [] if args.no_system else missing_system_packages()
    system_ok = install_system(missing)
    try:
        if not torch_ok():
            # With no torch at all, a bare "torch" would pull a multi-GB CUDA build; the pinned
            # version resolves to the local CPU wheel here and to the CPU/CUDA default elsewhere.
            pip(TORCH)
        pip("-e", f"{ROOT}[{args.extras}]" if args.extras else str(ROOT))
        if "indextts" in args.extras.split(","):
            # Only indextts/gpt/model_v2.py is used; its own requirements come with the extra.
            pip("--no-deps", INDEXTTS)
    except SetupError as err:
        print(f"setup: error: {err}", file=sys.stderr)
        return 2
    still = [] if args.no_system else missing_system_packages()
    if still:
        print(f"setup: still missing system packages: {' '.join(still)} (speech chapters need them)",
              file=sys.stderr)
    print("setup: done" + ("" if system_ok and not still else " (see the messages above)"))
    return 0 if not still else 1


if __name__ == "__main__":
    sys.exit(main())
