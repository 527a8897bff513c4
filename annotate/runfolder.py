"""A sharded run's folder, `<output>.run/`: the one place that knows its layout.

    plan.json                   what the folder belongs to: the catalog (path, size, mtime), rows,
                                shard size, model and its weights, survey, template fit
    shards/shard-00003.npz      one finished shard: predictions for rows [start, stop) (no pickle)
    shards/shard-00003.sha256   that file's SHA-256, in place before the file is
    stores/shard-00003.h5       that shard's spectra store
    slurm/<job id>/             submitit scripts and logs
    slurm/shard-jobs.json       which submitted job ran which shard (for annotate status)

A shard is written to a temporary name, its checksum beside it, and renamed when complete, so a
shard file that exists is complete and is never recomputed; the merge reads each shard only after
its checksum matches, so a file changed or damaged since it was written is named, not merged.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .digest import file_sha256
from .errors import ConfigError, OutputError

PLAN = "plan.json"
SHARD_JOBS = "shard-jobs.json"
SUFFIX = ".run"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def for_output(cls, out: Path) -> "RunFolder":
        """The run folder of the annotated catalog `out` (absolute: tasks on other nodes use it)."""
        out = Path(out)
        return cls(out.with_name(out.name + SUFFIX))

    @property
    def output(self) -> Path | None:
        """The annotated catalog this folder belongs to (None for a folder named otherwise)."""
        name = self.path.name
        return self.path.with_name(name[:-len(SUFFIX)]) if name.endswith(SUFFIX) else None

    @property
    def plan_file(self) -> Path:
        return self.path / PLAN

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    @property
    def stores(self) -> Path:
        return self.path / "stores"

    def is_run(self) -> bool:
        return self.plan_file.is_file()

    def shard_file(self, name: str) -> Path:
        return self.path / "shards" / f"{name}.npz"

    def checksum_file(self, name: str) -> Path:
        return self.path / "shards" / f"{name}.sha256"

    def store_file(self, name: str) -> Path:
        return self.stores / f"{name}.h5"

    def done(self, shards: list) -> list:
        """The shards (anything with a `name`) whose files exist, in order."""
        return [s for s in shards if self.shard_file(s.name).exists()]

    # -- the plan ---------------------------------------------------------------------------------

    def read_plan(self) -> dict:
        return json.loads(self.plan_file.read_text())

    def write_plan(self, plan: dict) -> None:
        """Create or check the run's plan: a run folder belongs to one catalog, model and shard size."""
        path = self.plan_file
        if not path.exists():
            # array tasks starting together each write their own tmp file; the first hard link wins
            # and the others then find an identical plan
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{PLAN}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(plan, indent=1) + "\n")
            try:
                os.link(tmp, path)
                return
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: identical plans, so the last rename is fine
                os.replace(tmp, path)
                return
            finally:
                tmp.unlink(missing_ok=True)
        self.check_plan(plan)

    def check_plan(self, plan: dict) -> None:
        """ConfigError where the folder already holds the plan of another run (another catalog,
        model, survey, fit or shard size), whose shard files this run must not take for its own;
        nothing is written."""
        if not self.plan_file.exists():
            return
        old = self.read_plan()
        if old != plan:
            changed = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise ConfigError(f"{self.path} holds a run with other {', '.join(changed)}; remove it or choose another --out")

    # -- shard files ------------------------------------------------------------------------------

    def write_shard(self, name: str, arrays: dict) -> Path:
        """Write one shard's arrays (np.savez, no pickle) with its checksum; the file appears whole."""
        target = self.shard_file(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        checksum = self.checksum_file(name)
        tmp_sum = checksum.with_name(f".{checksum.name}.{os.getpid()}.tmp")
        tmp_sum.write_text(f"{file_sha256(tmp)}  {target.name}\n")
        tmp_sum.replace(checksum)
        tmp.replace(target)
        return target

    def verify_shard(self, name: str) -> None:
        """OutputError unless the shard file still has the checksum written with it."""
        target, checksum = self.shard_file(name), self.checksum_file(name)
        if not checksum.is_file():
            raise OutputError(f"{target}: no checksum ({checksum.name}) beside it; delete the shard file and rerun "
                              "the same command to recompute it")
        expected = checksum.read_text().split()[0]
        if file_sha256(target) != expected:
            raise OutputError(f"{target} changed since it was written (its SHA-256 is not the one in "
                              f"{checksum.name}); nothing was merged: delete it and rerun the same command to "
                              "recompute that shard")

    # -- submitted jobs ---------------------------------------------------------------------------

    def record_jobs(self, jobs: dict[str, str]) -> None:
        """Add {job id: shard name} to the record of submitted shard jobs."""
        path = self.slurm / SHARD_JOBS
        known = self.recorded_jobs()
        self.slurm.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({**known, **jobs}, indent=1) + "\n")
        tmp.replace(path)

    def recorded_jobs(self) -> dict[str, str]:
        path = self.slurm / SHARD_JOBS
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
