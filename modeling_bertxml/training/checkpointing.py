"""Everything a training run writes to disk: its output dir, its progress record, checkpoints, the best model so far
and the final model folder.

One rule for all of them (`atomic`'s): write into a hidden temporary folder, then rename into place. A kill, a full
disk or a second run at any moment leaves what was saved before complete and loadable, and never a half-written folder
that a resume or `from_pretrained` would accept. `pretrain.py` and `train.py` both save through this module only.
"""

import fcntl
import gc
import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType, PartialState
from accelerate.utils import parse_flag_from_env
from safetensors.torch import load_file
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from .atomic import (
    OutputDirError,
    OutputWriteError,
    check_writable,
    fresh_staging,
    fsync_dir,
    recover,
    set_default_modes,
    staging_dir,
    swap_in,
    write_json_atomic,
    writing,
)

logger = logging.getLogger(__name__)

RUN_ARGS_FILE = "run_args.json"
LOCK_FILE = ".bertxml.lock"  # held (flock) by the run's main process for as long as it writes the dir
MANIFEST_FILE = ".bertxml_manifest.json"  # what bert-xml wrote in the dir: the only names a run deletes (Manifest)
CHECKPOINTS_DIR, LOGS_DIR = "checkpoints", "logs"
CONFIG_FILE = "config.json"  # a model folder's file that transformers loads first: moved in last, out first
STAGING, ASIDE = ".model.tmp", ".model.old"  # the new model being written; the old one while the new replaces it
# Flags that may name the output dir itself: a model continued in place, read before anything there is replaced.
IN_PLACE_FLAGS = ("model_name_or_path", "tokenizer_name", "config_name")
OWN_PATH_FLAGS = ("output_dir", "resume_from_checkpoint")  # may name the dir, or a checkpoint in it
# What bert-xml writes at the top of an output dir, by name: how a folder written before the manifest existed is told
# apart from its user's files, and names a run refuses to find there unrecorded (it would write over them). A run's
# folders, with what they hold; then every file a model folder holds (transformers', peft's, card, figures, results,
# remote code, Endpoint handler, Space app).
RUN_FOLDERS = {
    CHECKPOINTS_DIR: re.compile(r"\.?(step_\d+|best_model)(\.tmp|\.old)?"),
    LOGS_DIR: re.compile(r"bert-xml-[\w-]+"),  # one TensorBoard folder per script (its tracker project name)
}
MODEL_FILE = re.compile(
    r"(adapter_)?model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|vocab\.txt|"
    r"(config|generation_config|adapter_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|"
    r"tokenizer_report|eval_results|test_results|train_results)\.json|(configuration|modeling|pipeline)_bertxml\.py|"
    r"handler\.py|app\.py|README\.md|requirements\.txt|(precision_recall|f1_by_code_frequency|training_curves)\.png"
)
# Arguments that may change between a run and its resumption without making it a different run.
RESUMABLE_ARG_CHANGES = frozenset(
    {
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "with_tracking",
        "report_to",
        "preprocessing_num_workers",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "eval_steps",
        "max_train_steps",
        "num_train_epochs",
        "per_device_eval_batch_size",
        "output_dir",
        "hub_revision",
        "create_pr",
        "commit_message",
    }
)
# What a saved folder's remote code needs (no bert-xml): an Inference Endpoint installs it, Hub users read it. An
# adapter folder needs peft too.
REQUIREMENTS_FILE = "requirements.txt"
REMOTE_CODE_REQUIREMENTS = ("transformers>=5", "torch>=2.4", "safetensors")
ADAPTER_REQUIREMENTS = ("peft>=0.17",)


# --------------------------------------------------------------------------------------------------- the output dir
@contextmanager
def claim_output_dir(output_dir: str | os.PathLike, run_args: dict, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold `output_dir` for one run: locked, checked, cleared of another run's outputs, its arguments recorded.

    Enter it before the Accelerator is made (trackers write into the dir) and keep it for the run's life: the main
    process holds an exclusive lock, so a second run writing into the same dir is refused instead of interleaving
    checkpoints. A dir that already holds a run is accepted only to resume the run in its `run_args.json`, or with
    `overwrite`, which first removes what earlier runs wrote there (the `Manifest`'s names, nothing else): a crash of
    the new run must not leave the old run's model beside the new run's arguments. Continuing a model in place (an
    `IN_PLACE_FLAGS` argument names the output dir) keeps that model until the new one replaces it. An input inside
    the output dir is refused before the dir is touched (`check_inputs_outside`).

    The process group this starts is destroyed on exit, once the run (and its DDP model) is gone. Not before: a DDP
    reducer freed after `destroy_process_group` holds the gloo group's last reference and destroys it holding the
    GIL, joining a worker thread that waits for the GIL to free a gathered tensor: a hang, about 1 run in 30 here.
    """
    # The first state made fixes the process group for the run: read ACCELERATE_USE_CPU as Accelerator would, or
    # CPU ranks launched with it would come up unsynchronised.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_synchronised(state)
    output_dir = Path(output_dir)
    check_inputs_outside(output_dir, run_args)
    _check_writable(output_dir)
    # Every rank's write probe is gone before the main process reads (or clears) the dir: a probe seen there would
    # be "files no bert-xml run wrote", and one cleared there would fail its rank's probe.
    state.wait_for_everyone()
    lock = _Lock(output_dir) if state.is_main_process else None
    try:
        if state.is_main_process:
            recover_model_files(output_dir)
            try:
                manifest, in_place = Manifest.read(output_dir), is_in_place(output_dir, run_args)
                _check_contents(output_dir, manifest, run_args, resume, overwrite, in_place)
            except OutputDirError:
                lock.refused()
                raise
            if overwrite and not resume:
                _clear(output_dir, manifest, keep_model=in_place)
            if RUN_ARGS_FILE not in manifest.run:
                manifest.run.append(RUN_ARGS_FILE)
            manifest.write(output_dir)  # before run_args.json exists; also records an older version's files
            write_json_atomic(output_dir / RUN_ARGS_FILE, run_args)
        state.wait_for_everyone()
        yield
    finally:
        if lock is not None:
            lock.close()
        gc.collect()  # a model in a reference cycle is freed now, while the group lives
        state.destroy_process_group()


def is_in_place(output_dir: str | os.PathLike, run_args: dict) -> bool:
    """Whether the run continues the model (or tokenizer, config) that is in its own output dir."""
    output = Path(output_dir).resolve()
    return any(run_args.get(flag) and Path(run_args[flag]).resolve() == output for flag in IN_PLACE_FLAGS)


def check_inputs_outside(output_dir: str | os.PathLike, run_args: dict) -> None:
    """Refuse any argument that names an existing file or folder (glob patterns expanded) inside the output dir:
    notes, codes, a tokenizer. What a run replaces or deletes there must never be what it reads; the model continued
    in place (`IN_PLACE_FLAGS` naming the dir itself) is the exception, read whole before anything is replaced.
    Every argument is looked at, not a list of data flags, so that a flag added later is covered too."""
    output = Path(output_dir).resolve()
    if not output.is_dir():
        return  # nothing can be inside it yet
    for flag, values in run_args.items():
        for value in values if isinstance(values, list) else [values]:
            if flag in OWN_PATH_FLAGS or not isinstance(value, str):
                continue
            if flag in IN_PLACE_FLAGS and Path(value).resolve() == output:
                continue
            paths = glob.glob(value) or ([value] if os.path.lexists(value) else [])  # a pattern, or a literal name
            if any(Path(path).resolve().is_relative_to(output) for path in paths):
                raise OutputDirError(
                    f"--{flag} {value} is inside --output_dir {output_dir}, where a run replaces and deletes files: "
                    "move it out, or choose another --output_dir"
                )


def check_synchronised(state: PartialState) -> None:
    """Refuse a multi-process launch whose processes did not join one process group: each would train (and save)
    its own model. `accelerate launch --multi_gpu` does this on a CPU-only machine without ACCELERATE_USE_CPU=1.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > state.num_processes:
        raise RuntimeError(
            f"{launched} processes were launched but they are not synchronised (each sees {state.num_processes}): "
            "on a CPU-only machine set ACCELERATE_USE_CPU=1 for a multi-process launch"
        )
    wants_fsdp = parse_flag_from_env("ACCELERATE_USE_FSDP")
    if wants_fsdp and getattr(state, "distributed_type", None) != DistributedType.FSDP:
        # Accelerate turns FSDP on for GPUs and other accelerators only; on CPU it would silently run DDP, with the
        # weights of every rank but the first left on the meta device (fsdp_cpu_ram_efficient_loading), and fail in
        # prepare() with "Cannot copy out of meta tensor".
        raise RuntimeError(
            f"the launch asks for FSDP but Accelerate set up {state.distributed_type.name}: Accelerate runs FSDP on "
            "GPUs only. On CPU use configs/accelerate/multi_gpu.yaml (DDP) with ACCELERATE_USE_CPU=1"
        )


def _check_writable(output_dir: Path) -> None:
    """The output dir and every folder of an earlier run in it (checkpoints, logs: what this run writes into or
    deletes from) must be writable, found now rather than at the first checkpoint, hours into the run."""
    check_writable(output_dir)
    for name in RUN_FOLDERS:
        for folder, _, _ in os.walk(output_dir / name):  # nothing for a folder that does not exist
            check_writable(Path(folder), f"{folder}, a folder of --output_dir {output_dir} that runs write into,")


class _Lock:
    """The exclusive lock (flock) on `output_dir/LOCK_FILE` the run's main process holds while it writes the dir.

    A run refused before it wrote anything (the dir holds a user's files, another run's) removes the lock file if it
    made it: no `.bertxml.lock` is left in a user's folder. Removing it is safe since every run checks, once it holds
    the lock, that the file it locked is still the one at the path (else a run that opened it before the removal and a
    run that made a new one would both hold "the" lock)."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_FILE
        while True:
            self.made = not self.path.exists()
            self.handle = open(self.path, "a+")
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.seek(0)
                owner = self.handle.read().strip() or "unknown"
                self.handle.close()
                raise OutputDirError(
                    f"--output_dir {output_dir} is in use by another run (process {owner}); wait for it to end or "
                    "choose another --output_dir"
                ) from None
            if self._still_at_path():
                break
            self.handle.close()  # a refused run removed it after we opened it: lock the one at the path now
        self.handle.truncate(0)
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def _still_at_path(self) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(self.handle.fileno()).st_ino
        except FileNotFoundError:
            return False

    def refused(self) -> None:
        """The run is refused: remove the lock file if this run made it (the dir is left as it was found)."""
        if self.made:
            self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self.handle.close()  # closing the descriptor releases the lock; the file stays (another run may hold it)


@dataclass
class Manifest:
    """The top-level names of an output dir that bert-xml runs wrote (`MANIFEST_FILE`): the only ones a run deletes.

    A name is recorded before it is created (write-ahead), so a kill never leaves a file of ours unrecorded, and a name
    found there unrecorded is someone else's (the user's notes, a folder of theirs) and is never deleted. `run`: a run's
    own files (arguments, checkpoints, logs); `model`: the saved model folder's files, kept when a run continues that
    model in place; `swap`: the old and new model files while `replace_model_files` swaps them.
    """

    run: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    swap: dict[str, list[str]] | None = None

    @classmethod
    def read(cls, output_dir: Path) -> "Manifest":
        """The dir's manifest; for a dir of an older version's run, the names it wrote; else an empty one."""
        path = output_dir / MANIFEST_FILE
        if path.is_file():
            try:
                return cls(**json.loads(path.read_text()))
            except (ValueError, TypeError) as error:
                raise OutputDirError(
                    f"{path} cannot be read ({error}): without it bert-xml cannot tell its files from yours there; "
                    "choose another --output_dir"
                ) from None
        return cls.of_older_version(output_dir) if (output_dir / RUN_ARGS_FILE).is_file() else cls()

    @classmethod
    def of_older_version(cls, output_dir: Path) -> "Manifest":
        """A dir that bert-xml wrote before it kept a manifest (`run_args.json` but no `MANIFEST_FILE`): its files are
        told from the user's by name, as that version wrote them (`RUN_FOLDERS`, `MODEL_FILE`), a folder only when all
        it holds is bert-xml's too. Everything else is the user's and stays. Refusing such dirs instead would send
        everyone who trained with that version to clean them by hand, which is how files get lost."""
        manifest = cls()
        for path in sorted(output_dir.iterdir()):
            name = path.name
            if name == RUN_ARGS_FILE or (name in RUN_FOLDERS and _only_holds(path, RUN_FOLDERS[name])):
                manifest.run.append(name)
            elif MODEL_FILE.fullmatch(name) and path.is_file() and not path.is_symlink():
                manifest.model.append(name)
        return manifest

    def owned(self) -> set[str]:
        swap = self.swap or {}
        return {*self.run, *self.model, *swap.get("old", ()), *swap.get("new", ()), STAGING, ASIDE}

    def write(self, output_dir: Path) -> None:
        write_json_atomic(output_dir / MANIFEST_FILE, asdict(self))
        fsync_dir(output_dir)  # durable before the names it records are created


def _only_holds(folder: Path, names: re.Pattern) -> bool:
    return folder.is_dir() and not folder.is_symlink() and all(names.fullmatch(p.name) for p in folder.iterdir())


def is_run_output(name: str) -> bool:
    """Whether bert-xml writes a top-level file or folder of this name in an output dir."""
    return name == RUN_ARGS_FILE or name in RUN_FOLDERS or MODEL_FILE.fullmatch(name) is not None


def is_run_dir(folder: Path) -> bool:
    """Whether bert-xml runs wrote `folder` (it keeps a manifest, or an older version's run_args.json)."""
    return (folder / MANIFEST_FILE).is_file() or (folder / RUN_ARGS_FILE).is_file()


def record_output(output_dir: str | os.PathLike, name: str) -> None:
    """Record in the manifest that a run is about to create `output_dir/name`, so that `--overwrite_output_dir` may
    delete it later. A name already there unrecorded is someone else's and stays unrecorded (never deleted)."""
    output_dir = Path(output_dir)
    manifest = Manifest.read(output_dir) if output_dir.is_dir() else Manifest()
    if name in manifest.owned() or os.path.lexists(output_dir / name):
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest.run.append(name)
    manifest.write(output_dir)


def _names(output_dir: Path) -> list[str]:
    return sorted(path.name for path in output_dir.iterdir() if path.name not in (LOCK_FILE, MANIFEST_FILE))


def _check_contents(
    output_dir: Path, manifest: Manifest, run_args: dict, resume: bool, overwrite: bool, in_place: bool
) -> None:
    owned = manifest.owned()
    ours = [name for name in _names(output_dir) if name in owned]
    theirs = [name for name in _names(output_dir) if name not in owned]
    if not ours and theirs and not resume:  # not a bert-xml run: its files are someone else's, never ours to delete
        raise OutputDirError(
            f"--output_dir {output_dir} holds files that no bert-xml run wrote (e.g. {theirs[0]}): choose an empty or "
            "new --output_dir (--overwrite_output_dir only replaces a previous run"
            + (", and a model continued in place must be one a run wrote there)" if in_place else ")")
        )
    if clashing := [name for name in theirs if is_run_output(name)]:  # a run would write over it, or into it
        raise OutputDirError(
            f"--output_dir {output_dir} holds {clashing[0]}, which no bert-xml run recorded writing but a run writes: "
            "move it out, or choose another --output_dir"
        )
    if set(ours) <= {RUN_ARGS_FILE} and not resume:
        return  # empty, or a run that stopped before writing anything (bad notes, a typo): retrying needs no flag
    if overwrite and not resume:
        return
    if not resume:
        raise OutputDirError(
            f"--output_dir {output_dir} already holds a run ({', '.join(ours)}); pass --resume_from_checkpoint latest "
            "to continue it or --overwrite_output_dir to start over"
            + (" (its model, continued in place, stays until the new one replaces it)" if in_place else "")
        )
    if (output_dir / RUN_ARGS_FILE).is_file():
        _check_same_run(output_dir / RUN_ARGS_FILE, run_args)


def _check_same_run(recorded: Path, run_args: dict) -> None:
    """A resumed run must be the recorded one: other data or hyperparameters would silently make a different model."""
    previous = json.loads(recorded.read_text())
    changed = sorted(
        key
        for key in set(previous) | set(run_args)
        if key not in RESUMABLE_ARG_CHANGES and previous.get(key) != run_args.get(key)
    )
    if changed:
        details = "; ".join(f"--{key}: {previous.get(key)!r} -> {run_args.get(key)!r}" for key in changed)
        raise OutputDirError(
            f"--output_dir {recorded.parent} holds a different run ({recorded} differs: {details}); resume with "
            "the same arguments, or pass --overwrite_output_dir"
        )


def _clear(output_dir: Path, manifest: Manifest, keep_model: bool) -> None:
    """Delete what earlier runs wrote (checkpoints, so "latest" never resumes them; logs; model, card, results) and
    nothing else. `keep_model`: the model is continued in place, so it stays until `replace_model_files` swaps the
    new one in; the folder is the old model, whole, until then."""
    names = manifest.run + ([] if keep_model else manifest.model)
    removed = [name for name in names if os.path.lexists(output_dir / name)]
    for name in removed:
        _remove(output_dir / name)
    manifest.run = []
    if not keep_model:
        manifest.model = []
    kept = [name for name in _names(output_dir) if name not in manifest.owned()]
    logger.info(
        f"Removed the previous run's files from {output_dir} (--overwrite_output_dir): {', '.join(removed)}"
        + (f"; kept the model continued in place ({len(manifest.model)} files)" if keep_model else "")
        + (f"; kept what no run wrote: {', '.join(kept)}" if kept else "")
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# ------------------------------------------------------------------------------------------------ progress record
@dataclass
class Progress:
    """Where a run stands; every checkpoint records it, so a resumed run continues exactly (early stopping too)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of `epoch` already trained: what a resumed run skips
    tokens: int = 0  # input tokens trained on, all processes
    best_score: float = -1.0  # best validation score so far (train.py: MAP, in [0, 1])
    best_step: int = 0
    evals_without_improvement: int = 0
    history: list[dict] = field(default_factory=list)  # each evaluation's step, epoch, MAP, loss: the card's curves

    def next_epoch(self) -> None:
        self.epoch, self.batches_in_epoch = self.epoch + 1, 0


# -------------------------------------------------------------------------------------------------------- checkpoints
class CheckpointManager:
    """Atomic, resumable checkpoints in `output_dir/checkpoints/step_{N}`, and the best model in `best_model`.

    Every rank writes `accelerator.save_state` into a hidden temporary folder; the main process then writes
    `training_state.json` (the marker of a complete checkpoint) and renames the folder into place. A save killed at
    any point leaves either no `step_{N}` or one without the marker, which `resolve` never accepts.

    With `total_limit`, each save then deletes the oldest complete step folders beyond the newest `total_limit` (each
    holds the optimizer state, about three times the weights); `best_model` is not a step folder and always stays.
    """

    subdir = CHECKPOINTS_DIR
    state_file = "training_state.json"
    best_name = "best_model"

    def __init__(self, output_dir: str | os.PathLike, total_limit: int | None = None):
        self.root = Path(output_dir) / self.subdir
        self.total_limit = total_limit

    @property
    def best_dir(self) -> Path:
        return self.root / self.best_name

    def is_complete(self, path: Path) -> bool:
        return (path / self.state_file).is_file()

    def complete_steps(self) -> list[Path]:
        """The complete step folders, oldest (fewest steps) first."""
        complete = [p for p in self.root.glob("step_*") if p.name[5:].isdigit() and self.is_complete(p)]
        return sorted(complete, key=lambda p: int(p.name[5:]))

    def save(self, accelerator: Accelerator, progress: Progress, extra: dict | None = None) -> Path:
        """Save the full training state after `progress.step`; `extra` (JSON) comes back from `load` too."""
        final = self.root / f"step_{progress.step}"
        state = {**asdict(progress), **(extra or {})}
        self._save_folder(accelerator, final, lambda folder: accelerator.save_state(str(folder)), state)
        logger.info(f"Saved checkpoint {final}")
        if self.total_limit and accelerator.is_main_process:
            self._rotate(keep=final)
        return final

    def _rotate(self, keep: Path) -> None:
        """Delete all but the newest `total_limit` complete step folders (never `keep`, the one just saved)."""
        for old in self.complete_steps()[: -self.total_limit]:
            if old != keep:
                shutil.rmtree(old)
                logger.info(f"Deleted checkpoint {old} (--checkpoints_total_limit {self.total_limit})")

    def save_best(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        """The best weights so far; the previous best stays complete until the new one is in place."""
        self._save_folder(accelerator, self.best_dir, lambda folder: accelerator.save_model(model, folder))
        logger.info(f"Saved the best model so far to {self.best_dir}")

    def restore_best(self, accelerator: Accelerator, model: torch.nn.Module) -> None:
        """Load the weights of `save_best` into `model` (on every rank)."""
        if accelerator.is_main_process:
            recover(self.best_dir)
        accelerator.wait_for_everyone()
        state_dict, unwrapped = {}, accelerator.unwrap_model(model)
        for shard in sorted(self.best_dir.glob("*.safetensors")):
            state_dict.update(load_file(shard))
        # Tied weights (an MLM decoder) are saved once, under their source's name.
        missing = set(unwrapped.load_state_dict(state_dict, strict=False).missing_keys)
        missing -= set(getattr(unwrapped, "all_tied_weights_keys", None) or {})
        if missing:
            raise OutputWriteError(f"{self.best_dir} is incomplete (no {', '.join(sorted(missing)[:3])}, ...)")

    def _save_folder(
        self, accelerator: Accelerator, final: Path, write: Callable[[Path], None], state: dict | None = None
    ) -> None:
        """All ranks `write` into a temporary folder; the main process adds `state` as the marker and swaps it in."""
        temporary = staging_dir(final)
        if accelerator.is_main_process:
            record_output(self.root.parent, self.root.name)
            fresh_staging(final)
        accelerator.wait_for_everyone()
        with writing(final, temporary):
            write(temporary)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            with writing(final, temporary):
                if state is not None:
                    write_json_atomic(temporary / self.state_file, state)
                set_default_modes(temporary)
            swap_in(temporary, final)
        accelerator.wait_for_everyone()

    def resolve(self, resume_from_checkpoint: str | None) -> Path | None:
        """The checkpoint to resume from: a folder, or "latest" (None when this run has no complete one yet)."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            return (self.complete_steps() or [None])[-1]
        path = Path(resume_from_checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
        if not self.is_complete(path):
            raise ValueError(
                f"--resume_from_checkpoint {path}: incomplete checkpoint (no {self.state_file}; its save was "
                "interrupted): pick an earlier one or use latest"
            )
        return path

    def resume(
        self, accelerator: Accelerator, resume_from_checkpoint: str | None, expect: dict | None = None
    ) -> Progress:
        """The progress of the checkpoint named by `resume_from_checkpoint` with its training state restored, or a
        fresh `Progress` when there is none yet. `expect` holds `extra` values the checkpoint must have been saved
        with (e.g. the label space): another value would resume a different run, so it is refused."""
        path = self.resolve(resume_from_checkpoint)
        if path is None:
            if resume_from_checkpoint:
                logger.info(f"No complete checkpoint in {self.root}: starting from step 0")
            return Progress()
        saved = json.loads((path / self.state_file).read_text())
        for key, value in (expect or {}).items():
            if key in saved and saved[key] != value:
                raise OutputDirError(
                    f"{path} was saved by a run with other {key} ({_difference(saved[key], value)}): start a new run "
                    "(--overwrite_output_dir); a saved coder can be fine-tuned further with --model_name_or_path"
                )
        return self.load(accelerator, path)[0]

    def load(self, accelerator: Accelerator, path: Path) -> tuple[Progress, dict]:
        """Restore model, optimizer, scheduler and RNG states; return the recorded progress and the `extra` of
        `save`."""
        state = json.loads((path / self.state_file).read_text())
        names = {field.name for field in fields(Progress)}
        progress = Progress(**{key: value for key, value in state.items() if key in names})
        extra = {key: value for key, value in state.items() if key not in names}
        accelerator.load_state(str(path))
        logger.info(f"Resumed from {path} at step {progress.step} (epoch {progress.epoch})")
        return progress, extra


def _difference(saved, current) -> str:
    if isinstance(saved, list) and isinstance(current, list):
        added, removed = len(set(current) - set(saved)), len(set(saved) - set(current))
        return f"{added} added, {removed} removed" if added or removed else "same items, another order"
    return f"{saved!r}, now {current!r}"


# ------------------------------------------------------------------------------------------------------ model folder
def save_model_folder(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    output_dir: str | os.PathLike,
    config: PretrainedConfig | None = None,
    add_files: Callable[[Path], None] | None = None,
) -> None:
    """Write a complete model folder once: weights, tokenizer, `config` (when the model's `save_pretrained` writes
    none, as a PEFT adapter's does not) and whatever `add_files(folder)` adds (card, results, code).

    All ranks gather the state dict (FSDP/DeepSpeed shard it); the main process writes everything into a temporary
    folder, then swaps it for the model already there (`replace_model_files`).
    """
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        output, temporary = Path(output_dir), Path(output_dir) / STAGING
        recover_model_files(output)
        with writing(output, temporary):
            unwrapped = accelerator.unwrap_model(model)
            adapter = hasattr(unwrapped, "peft_config")
            # An adapter never trains the embeddings; peft's default ("auto") would ask the Hub about the base.
            options = {"save_embedding_layers": False} if adapter else {}
            unwrapped.save_pretrained(temporary, state_dict=state_dict, save_function=accelerator.save, **options)
            tokenizer.save_pretrained(temporary)
            requirements = REMOTE_CODE_REQUIREMENTS + (ADAPTER_REQUIREMENTS if adapter else ())
            (temporary / REQUIREMENTS_FILE).write_text("".join(f"{line}\n" for line in requirements))
            if config is not None and not (temporary / CONFIG_FILE).exists():
                config.save_pretrained(temporary)
            if add_files is not None:
                add_files(temporary)
            set_default_modes(temporary)
        replace_model_files(output, temporary)
        logger.info(f"Saved model and tokenizer to {output}")
    accelerator.wait_for_everyone()


def replace_model_files(output_dir: Path, new: Path) -> None:
    """Swap the model files in `output_dir` (the manifest's) for those of the complete folder `new`, never leaving a
    mix: the old ones go aside into `ASIDE`, `config.json` first; the new ones come in, `config.json` last; then the
    old ones are deleted, including those the new model lacks (an adapter beside a new full model). So a loadable
    `config.json` always sits beside one whole model, and a kill in between is undone (or finished) by
    `recover_model_files`, which the next run into the dir calls first. The user's files there are never touched.
    """
    manifest = Manifest.read(output_dir)
    old = [name for name in manifest.model if os.path.lexists(output_dir / name)]
    manifest.swap = {"old": old, "new": sorted(path.name for path in new.iterdir())}
    manifest.write(output_dir)
    aside = output_dir / ASIDE
    aside.mkdir()
    for name in sorted(old, key=lambda name: name != CONFIG_FILE):
        os.replace(output_dir / name, aside / name)
    for name in sorted(manifest.swap["new"], key=lambda name: name == CONFIG_FILE):
        os.replace(new / name, output_dir / name)
    new.rmdir()  # every new file is in place: the swap is done
    _finish_swap(output_dir, manifest)


def _finish_swap(output_dir: Path, manifest: Manifest) -> None:
    manifest.model, manifest.swap = manifest.swap["new"], None
    manifest.write(output_dir)
    shutil.rmtree(output_dir / ASIDE, ignore_errors=True)
    fsync_dir(output_dir)


def recover_model_files(output_dir: str | os.PathLike) -> None:
    """Put the old model back whole when a kill interrupted `replace_model_files` before every new file was in place,
    finish the swap when it interrupted it after, and drop a new model that was still being written."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return
    manifest, staging, aside = Manifest.read(output_dir), output_dir / STAGING, output_dir / ASIDE
    if manifest.swap is not None and not staging.exists():
        _finish_swap(output_dir, manifest)
    elif manifest.swap is not None:
        for name in manifest.swap["new"]:
            if not os.path.lexists(staging / name):  # already moved in; the old file of that name is aside
                _remove(output_dir / name)
        for path in sorted(aside.iterdir() if aside.is_dir() else (), key=lambda path: path.name == CONFIG_FILE):
            os.replace(path, output_dir / path.name)
        manifest.swap = None
        manifest.write(output_dir)
        logger.warning(f"{output_dir}: a model save was interrupted; the previous model was put back")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(aside, ignore_errors=True)


__all__ = [
    "CheckpointManager",
    "OutputDirError",
    "OutputWriteError",
    "Progress",
    "check_synchronised",
    "claim_output_dir",
    "record_output",
    "recover_model_files",
    "save_model_folder",
    "write_json_atomic",
]
