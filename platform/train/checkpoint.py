"""Training checkpoints with torch DCP, on a local path or ``s3://``.

Layout under the checkpoint root::

    step-000100/
        .metadata, __*_*.distcp   DCP: model.*, optimizer.*, lr_scheduler.* (resharded on load)
        config.json               the model's shape (HF-style), so dcp_io / `qtrain convert` read it
        extra/rank-00000.json     per-rank state: data loader position, RNG states, step
        COMPLETE                  commit marker, written last

A checkpoint is "complete" only once ``COMPLETE`` exists. It is written by rank 0 after DCP's
coordinator has finished the metadata — which happens only after every rank's shards and (written
before the save starts) per-rank files are durable. With ``async_save`` the DCP write runs on a
background thread after staging the state to CPU, and the marker is written from that thread's
completion callback; a process killed mid-save leaves no marker, so ``latest()`` never picks it.
Retention keeps the newest ``keep_last`` complete checkpoints.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from concurrent.futures import Future

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from qwen3_trainer.model import storage
from qwen3_trainer.model.dcp_io import reader, writer

log = logging.getLogger(__name__)
_STEP = re.compile(r"^step-(\d+)$")
MARKER = "COMPLETE"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist(), "python": list(random.getstate()[1]),
             "python_pos": random.getstate()[2], "numpy": np.random.get_state()[1].tolist(),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))


class Checkpointer:
    def __init__(self, root: str, *, keep_last: int = 2, async_save: bool = True, rank: int = 0,
                 model_config: dict | None = None):
        self.root = root.rstrip("/")
        self.keep_last = keep_last
        self.async_save = async_save
        # Async saves run their collectives on a background thread: they get a gloo group of their
        # own, or they would interleave with the training step's collectives on the default group.
        # new_group is collective: every rank constructs the Checkpointer at the same point.
        self._pg = dist.new_group(backend="gloo") if async_save and dist.is_initialized() else None
        self.rank = rank
        self.model_config = model_config
        self._pending: Future | None = None
        self._lock = threading.Lock()

    # -- discovery -----------------------------------------------------------------------------
    def steps(self) -> list[tuple[int, bool]]:
        """(step, complete) for every checkpoint directory under the root, oldest first."""
        out = []
        for name in storage.listdir(self.root):
            m = _STEP.match(name)
            if m:
                out.append((int(m.group(1)), storage.exists(storage.join(self.root, name, MARKER))))
        return sorted(out)

    def path(self, step: int) -> str:
        return storage.join(self.root, f"step-{step:06d}")

    def latest(self) -> str | None:
        complete = [s for s, ok in self.steps() if ok]
        return self.path(complete[-1]) if complete else None

    # -- save ----------------------------------------------------------------------------------
    def save(self, step: int, state: dict, extra: dict, *, force_sync: bool = False) -> str:
        """Save ``state`` (Stateful objects / tensors, resharded on load) and this rank's ``extra``."""
        self.wait()  # one save in flight at a time
        path = self.path(step)
        self._write_json(storage.join(path, "extra", f"rank-{self.rank:05d}.json"), extra)
        if self.rank == 0 and self.model_config is not None:
            self._write_json(storage.join(path, "config.json"), self.model_config)
        if self.async_save and not force_sync:
            fut = dcp.async_save(state, storage_writer=writer(path), checkpoint_id=path, process_group=self._pg)
            if self.rank == 0:
                fut.add_done_callback(lambda f, p=path: self._commit(p, f))
            self._pending = fut
        else:
            dcp.save(state, storage_writer=writer(path), checkpoint_id=path)
            if self.rank == 0:
                self._commit(path, None)
        return path

    def wait(self) -> None:
        """Block until the in-flight async save (if any) has finished on this rank."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        with self._lock:
            pass

    def _commit(self, path: str, fut: Future | None) -> None:
        with self._lock:
            if fut is not None and fut.exception() is not None:
                log.error("checkpoint %s failed: %s", path, fut.exception())
                return
            self._write_bytes(storage.join(path, MARKER), b"ok\n")
            self._retain()

    def _retain(self) -> None:
        complete = [s for s, ok in self.steps() if ok]
        doomed = complete[: -self.keep_last]
        newest = complete[-1] if complete else None
        # also drop incomplete leftovers older than the newest complete checkpoint
        doomed += [s for s, ok in self.steps() if not ok and newest is not None and s < newest]
        for s in doomed:
            fs, p = storage.filesystem(self.path(s))
            fs.rm(p, recursive=True)

    # -- load ----------------------------------------------------------------------------------
    def load(self, path: str, state: dict, world_rank: int) -> dict:
        dcp.load(state, storage_reader=reader(path), checkpoint_id=path)
        own = storage.join(path, "extra", f"rank-{world_rank:05d}.json")
        if not storage.exists(own):  # resumed on a different world size
            own = storage.join(path, "extra", "rank-00000.json")
        return json.loads(storage.read_text(own))

    @staticmethod
    def _write_json(path: str, data: dict) -> None:
        Checkpointer._write_bytes(path, json.dumps(data).encode())

    @staticmethod
    def _write_bytes(path: str, data: bytes) -> None:
        fs, p = storage.filesystem(path)
        if not storage.is_remote(path):
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "wb") as f:
            f.write(data)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
