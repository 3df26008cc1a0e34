"""Build the AWS Lambda deployment zip of the reverb rollup function.

The zip holds the project (``backbeat`` and ``reverb_rollup``) and its runtime dependencies at
the archive root, where the Lambda Python runtime looks for them, so the handler
``reverb_rollup.aws_lambda.handler`` imports as it does in a virtualenv.

Dependencies are resolved for the Lambda platform, not for the building machine: binary wheels
only (manylinux, the chosen architecture and Python version), so a build on any Linux or macOS
host yields a package that loads on Lambda. ``--native`` installs for the host instead (for a
dependency without a wheel; then build on a machine that matches Lambda).

The archive is reproducible: sorted entries, fixed timestamps and modes, and byte code compiled
with hash-based invalidation when the building Python matches the target version.

    python3 infra/terraform/package_lambda.py                      # build/reverb-rollup-lambda.zip
    python3 infra/terraform/package_lambda.py --architecture arm64 --python-version 3.12
"""

from __future__ import annotations

import argparse
import compileall
import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = ROOT / "build" / "reverb-rollup-lambda.zip"

#: Lambda rejects a direct upload above 50 MB and an unpacked function above 250 MB.
MAX_ZIP_BYTES = 50 * 1000 * 1000
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024

#: manylinux tags the Lambda runtimes accept (Amazon Linux 2023 ships glibc 2.34).
_GLIBC_TAGS = ("manylinux2014", "manylinux_2_28", "manylinux_2_34")
_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}

#: Where Lambda unpacks the function code.
LAMBDA_TASK_ROOT = "/var/task"

#: 1980-01-01, the earliest time a zip entry can carry.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _run(command: Sequence[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


#: Top-level entries that are never part of a build: VCS data, virtualenvs, caches, earlier
#: build output, and folders the wheel does not ship.
_TOP_LEVEL_IGNORE = {
    ".git",
    ".venv",
    "node_modules",
    "build",
    "dist",
    "bench",
    "tests",
    "docs",
    "infra",
    ".hypothesis",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}


def _ignore(root: Path) -> Callable[[str, list[str]], set[str]]:
    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        if Path(directory) == root:
            skipped |= {n for n in names if n in _TOP_LEVEL_IGNORE or n.startswith(".venv-")}
        return skipped

    return ignore


def build_wheel(project: Path, work: Path) -> Path:
    """The project's own wheel (non-editable); its dependencies are installed separately.

    It is built from a clean copy, so setuptools' in-tree build/ and *.egg-info folders neither
    leak stale modules into the wheel nor clutter the working tree.
    """
    source = work / "source"
    shutil.copytree(project, source, ignore=_ignore(project), symlinks=True)
    wheel_dir = work / "wheel"
    _run(_pip("wheel", "--no-deps", "--wheel-dir", str(wheel_dir), str(source)))
    wheels = sorted(wheel_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel of {project}, found {len(wheels)}")
    return wheels[0]


def install(
    wheel: Path, target: Path, *, python_version: str, architecture: str, native: bool
) -> None:
    args = ["install", "--no-compile", "--target", str(target)]
    if not native:
        machine = _MACHINE[architecture]
        args += [
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            python_version,
        ]
        for tag in _GLIBC_TAGS:
            args += ["--platform", f"{tag}_{machine}"]
    _run(_pip(*args, str(wheel)))


def prune(target: Path) -> None:
    """Drop what the runtime never uses and what would differ from build to build.

    Console scripts carry the building host's shebang; direct_url.json records the temporary
    path the project's wheel was installed from.
    """
    shutil.rmtree(target / "bin", ignore_errors=True)
    for cache in sorted(target.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    for direct_url in target.glob("*.dist-info/direct_url.json"):
        direct_url.unlink()
        record = direct_url.with_name("RECORD")
        if record.is_file():
            lines = record.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [
                line
                for line in lines
                if not line.startswith(f"{direct_url.parent.name}/direct_url.json,")
            ]
            record.write_text("".join(kept), encoding="utf-8")


def compile_bytecode(target: Path, python_version: str) -> bool:
    """Precompile so cold starts skip it (/var/task is read-only), if this Python matches."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python_version:
        return False
    ok = compileall.compile_dir(
        str(target),
        # Record the path the code has on Lambda, not the temporary build folder.
        ddir=LAMBDA_TASK_ROOT,
        quiet=1,
        workers=1,
        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
    )
    if not ok:
        raise SystemExit("byte-compiling the package failed")
    return True


def _files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def write_zip(source: Path, output: Path) -> tuple[int, int]:
    """Write a reproducible zip of ``source``; returns (files, unpacked bytes)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    count = size = 0
    with zipfile.ZipFile(
        partial, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9
    ) as archive:
        for path in _files(source):
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=_ZIP_EPOCH)
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            archive.writestr(info, data, compresslevel=9)
            count += 1
            size += len(data)
    partial.replace(output)
    return count, size


def check_layout(target: Path) -> None:
    """The handler module must be at the archive root, or Lambda cannot import it."""
    handler = target / "reverb_rollup" / "aws_lambda.py"
    if not handler.is_file():
        print(
            "warning: reverb_rollup/aws_lambda.py is not in the package; "
            "the handler reverb_rollup.aws_lambda.handler will not import",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--project", type=Path, default=ROOT, help="project to package (default: this repository)"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="zip to write (default: %(default)s)"
    )
    parser.add_argument(
        "--python-version", default="3.11", help="Lambda Python version (default: %(default)s)"
    )
    parser.add_argument(
        "--architecture",
        choices=sorted(_MACHINE),
        default="x86_64",
        help="Lambda architecture (default: %(default)s)",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="install dependencies for this machine instead of the Lambda platform",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="reverb-rollup-lambda-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(args.project.resolve(), work)
        target = work / "package"
        install(
            wheel,
            target,
            python_version=args.python_version,
            architecture=args.architecture,
            native=args.native,
        )
        prune(target)
        check_layout(target)
        compiled = compile_bytecode(target, args.python_version)
        count, size = write_zip(target, args.output)

    zipped = args.output.stat().st_size
    print(
        f"wrote {args.output} ({count} files, {zipped / 1e6:.1f} MB zipped, "
        f"{size / 1e6:.1f} MB unpacked, byte code {'included' if compiled else 'not included'}; "
        f"python{args.python_version}, {args.architecture})"
    )
    if size > MAX_UNZIPPED_BYTES:
        print(
            f"error: Lambda accepts at most {MAX_UNZIPPED_BYTES / 2**20:.0f} MiB unpacked",
            file=sys.stderr,
        )
        return 1
    if zipped > MAX_ZIP_BYTES:
        print(
            f"error: Lambda accepts a direct upload of at most {MAX_ZIP_BYTES / 1e6:.0f} MB",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
