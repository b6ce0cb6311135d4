"""Run ``python -m <module> args...`` with writing forbidden on every rank but 0 (for torchrun tests).

    torchrun --nproc-per-node 2 tests/helpers/rank_guard.py pipeline.stages.sr_pretrain ed

On RANK != 0, opening a file in the working directory (the project) for writing
(``open``/``io.open``/``os.open``) or renaming one into it raises, so a stage that lets another rank
write a checkpoint, log, card or metric fails the run. (Libraries' own temp files are allowed.)
"""

import builtins
import io
import os
import runpy
import sys

RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


PROJECT = os.path.realpath(os.getcwd())


def _refuse(what: object) -> None:
    if os.path.realpath(os.fspath(what)).startswith(PROJECT + os.sep):
        raise RuntimeError(f"rank {RANK} tried to write {what}: only rank 0 may write")


def _guard() -> None:
    real_open, real_os_open = builtins.open, os.open

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            _refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS:
            _refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = open_
    os.open = os_open
    real_replace, real_rename = os.replace, os.rename

    def replace(src, dst, *args, **kwargs):
        _refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        _refuse(dst)
        return real_rename(src, dst, *args, **kwargs)

    os.replace, os.rename = replace, rename


if __name__ == "__main__":
    if RANK != 0:
        _guard()
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
