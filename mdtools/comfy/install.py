"""`mdtools comfy-install --comfyui DIR`: put the node pack into a ComfyUI's custom_nodes/.

It links (or with --copy, copies) the custom-node folder `mdtools/comfy/custom_node` to
DIR/custom_nodes/<name>. That folder only imports `mdtools.comfy.nodes`, so mdtools must
be importable by the Python that runs ComfyUI; with --python the command checks that.
Nothing else in ComfyUI is touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ConfigError

#: The folder ComfyUI imports (its __init__.py exports NODE_CLASS_MAPPINGS).
ENTRY_DIR = Path(__file__).resolve().parent / "custom_node"
DEFAULT_NAME = "comfyui-mdtools"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of comfy-install, on `parser` (a subcommand parser or a fresh one)."""
    parser.add_argument("--comfyui", required=True, metavar="DIR", help="the ComfyUI folder (the one with main.py)")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"folder name in custom_nodes/ (default {DEFAULT_NAME})")
    parser.add_argument("--copy", action="store_true",
                        help="copy the entry folder instead of linking it (for file systems without symlinks)")
    parser.add_argument("--force", action="store_true", help="replace an existing link or earlier copy of the pack")
    parser.add_argument("--python", default=None, metavar="EXE",
                        help="the Python that runs ComfyUI: check that it can import mdtools")
    return parser


def _is_ours(path: Path) -> bool:
    """A link to our entry folder, or a copy of it (its __init__.py is ours byte for byte)."""
    if path.is_symlink():
        return Path(os.path.realpath(path)) == ENTRY_DIR
    init = path / "__init__.py"
    return path.is_dir() and init.is_file() and init.read_bytes() == (ENTRY_DIR / "__init__.py").read_bytes()


def install(comfyui: str | os.PathLike, *, name: str = DEFAULT_NAME, copy: bool = False, force: bool = False) -> Path:
    """Link or copy the entry folder into `comfyui`/custom_nodes/`name`; returns that path."""
    root = Path(comfyui).expanduser().resolve()
    if not (root / "main.py").is_file() or not (root / "comfy").is_dir():
        raise ConfigError(f"--comfyui {str(comfyui)!r} is not a ComfyUI folder (no main.py and comfy/ in it); "
                          f"give the folder you start ComfyUI from, e.g. ~/ComfyUI")
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"--name {name!r} must be a plain folder name, e.g. {DEFAULT_NAME}")
    target = root / "custom_nodes" / name
    target.parent.mkdir(exist_ok=True)
    if target.exists() or target.is_symlink():
        if not _is_ours(target):
            raise ConfigError(f"{target} exists and is not the mdtools pack; choose another --name")
        if not force:
            if target.is_symlink() and not copy:
                return target  # already linked here: nothing to do
            raise ConfigError(f"{target} already holds the mdtools pack; add --force to replace it")
        if target.is_symlink():
            target.unlink()
        else:
            shutil.rmtree(target)
    if copy:
        shutil.copytree(ENTRY_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        target.symlink_to(ENTRY_DIR, target_is_directory=True)
    return target


def check_python(python: str) -> str:
    """The mdtools version `python` imports, else ConfigError saying how to install it there."""
    repo = ENTRY_DIR.parents[2]
    try:
        out = subprocess.run([python, "-c", "import mdtools; print(mdtools.__version__)"], capture_output=True,
                             text=True, timeout=300)
    except OSError as e:
        raise ConfigError(f"--python {python!r} cannot be run ({e}); give the python of ComfyUI's environment") from e
    if out.returncode != 0:
        raise ConfigError(f"--python {python} cannot import mdtools; install it there: {python} -m pip install -e {repo}")
    return out.stdout.strip()


def run(args: argparse.Namespace) -> int:
    """The command, on parsed arguments (cli.py's subcommand calls this)."""
    target = install(args.comfyui, name=args.name, copy=args.copy, force=args.force)
    how = "copied to" if args.copy else "linked at"
    print(f"mdtools node pack {how} {target}")
    if args.python:
        print(f"{args.python} imports mdtools {check_python(args.python)}")
    else:
        print("ComfyUI's Python must import mdtools (pip install mdtools, or pip install -e <this checkout>); "
              "check with --python <ComfyUI's python>")
    print("restart ComfyUI: the nodes are under 'mdtools' (docs/comfyui.md)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m mdtools.comfy.install --comfyui DIR` (same as `mdtools comfy-install`)."""
    ap = add_arguments(argparse.ArgumentParser(prog="mdtools comfy-install", description=__doc__.splitlines()[0]))
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except ConfigError as e:
        print(f"mdtools comfy-install: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
