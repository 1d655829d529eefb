"""Writes that never leave half a file or folder where a reader would take it for a whole one.

Write into a hidden temporary, then rename into place; a failed write (a full disk, a folder that cannot be written)
becomes one error that names the target, with what is already there left as it was. `checkpointing` saves
checkpoints and model folders through these, and the tokenizer trainer its folder: this module imports no torch.
"""

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

# What a failed write raises: OSError from Python, RuntimeError ("unexpected pos") from torch's writer, and
# SafetensorError from safetensors, all for the same full disk.
WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


class OutputDirError(RuntimeError):
    """The output dir cannot take this run (another run's files, a live writer, not writable)."""


class OutputWriteError(RuntimeError):
    """Writing a checkpoint or model failed (disk full, permissions): what is already on disk is left as it was."""


def check_writable(folder: Path, name: str | None = None) -> None:
    """Create `folder` (and its parents) and write a file in it, so that a folder a run cannot write is refused before
    the run, not after hours of it. `name` is what the message calls it (default: "--output_dir FOLDER")."""
    # A name of its own per process: two runs (or ranks) probing at once must not delete each other's probe.
    probe = folder / f".write_test_{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        name = name or f"--output_dir {folder}"
        raise OutputDirError(f"{name} is not writable: {error.strerror} ({error.filename})") from error


@contextmanager
def writing(target: Path, temporary: Path) -> Iterator[None]:
    """Turn any failure to write `temporary` (a file or folder meant to become `target`) into one clear
    `OutputWriteError`, with the temporary files removed."""
    try:
        yield
    except WRITE_ERRORS as error:
        if temporary.is_dir():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)
        if isinstance(error, OutputWriteError):
            raise  # a file inside `temporary`, already named
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        free = shutil.disk_usage(target.parent if target.parent.exists() else Path.cwd()).free
        raise OutputWriteError(
            f"{target}: could not be written ({reason}; {free / 2**20:,.0f} MiB free on that disk); nothing "
            "already saved there was changed"
        ) from None


def write_json_atomic(path: Path, data: dict) -> None:
    """Write then rename, so a reader (or a crash) never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with writing(path, temporary), open(temporary, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def set_default_modes(folder: Path) -> None:
    """Give every file under `folder` the mode `open()` gives a new file (0666 less the umask: 0644 mostly).
    safetensors 0.8 writes its files 0600, so a model's weights would be the one file its group cannot read."""
    umask = os.umask(0o022)  # the only way to read it is to set it; put back at once
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: without it a power cut may forget the rename even though the files were written."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def staging_dir(final: Path) -> Path:
    """The hidden folder beside `final` where it is written whole before `swap_in` puts it in place."""
    return final.with_name(f".{final.name}.tmp")


def fresh_staging(final: Path) -> Path:
    """`staging_dir(final)`, empty: what a writer killed there left is removed (the name is ours alone)."""
    staging = staging_dir(final)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _aside(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover(final: Path) -> None:
    """Finish a swap that a kill interrupted: the old folder set aside is the complete one when `final` is missing."""
    old = _aside(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


def swap_in(temporary: Path, final: Path) -> None:
    """Replace folder `final` by the complete folder `temporary`: old aside, new in, old deleted. A kill between any
    two renames leaves a complete folder at `final` or at its aside name, which `recover` puts back."""
    recover(final)
    if final.exists():
        os.replace(final, _aside(final))
    os.replace(temporary, final)
    shutil.rmtree(_aside(final), ignore_errors=True)
    fsync_dir(final.parent)


__all__ = [
    "WRITE_ERRORS",
    "OutputDirError",
    "OutputWriteError",
    "check_writable",
    "fresh_staging",
    "fsync_dir",
    "recover",
    "set_default_modes",
    "staging_dir",
    "swap_in",
    "write_json_atomic",
    "writing",
]
