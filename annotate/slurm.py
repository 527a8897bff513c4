"""SLURM: cluster profiles and submitit executors. The only module that imports submitit.

A profile is a YAML file (see slurm/profiles/) naming what every job of a run asks for:

    partition: gpu           account: astro          qos: normal
    gpus_per_node: 1         cpus_per_task: 8        mem_gb: 32
    time_min: 120            constraint: a100        signal_delay_s: 90
    setup: ["module load cuda/12.4", "source ~/venvs/annotate/bin/activate"]
    additional: {reservation: survey}     # any other sbatch option, passed through

`executor(profile, folder)` turns it into a submitit executor writing its scripts and logs under
`folder`; `sbatch_script(...)` renders the script submitit would submit, for `--dry-run`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class Profile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    constraint: str | None = None
    signal_delay_s: int = 90
    setup: list = field(default_factory=list)
    additional: dict = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Profile":
        from .yamlconfig import read_fields

        profile = cls(**read_fields(path, cls, "SLURM profile", empty_ok=True))
        if profile.time_min < 1 or profile.cpus_per_task < 1 or profile.gpus_per_node < 0:
            raise ConfigError(f"{path}: time_min and cpus_per_task must be >= 1, gpus_per_node >= 0")
        return profile

    def submitit_parameters(self) -> dict:
        """Keyword arguments for submitit's SlurmExecutor.update_parameters."""
        parameters = {"time": self.time_min, "cpus_per_task": self.cpus_per_task,
                      "signal_delay_s": self.signal_delay_s, "setup": list(self.setup)}
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name):
                parameters[name] = getattr(self, name)
        if self.mem_gb:
            parameters["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.gpus_per_node:
            parameters["gpus_per_node"] = self.gpus_per_node
        if self.additional:
            parameters["additional_parameters"] = dict(self.additional)
        return parameters

    def to_dict(self) -> dict:
        return asdict(self)


def executor(profile: Profile, folder: str | Path, job_name: str = "annotate", array_parallelism: int = 256):
    """A submitit SlurmExecutor for `profile`, with scripts, logs and results under `folder/%j`."""
    import submitit

    slurm = submitit.SlurmExecutor(folder=Path(folder) / "%j", max_num_timeout=3)
    slurm.update_parameters(job_name=job_name, array_parallelism=array_parallelism, **profile.submitit_parameters())
    return slurm


def sbatch_script(profile: Profile, folder: str | Path, job_name: str = "annotate", array_size: int | None = None) -> str:
    """The sbatch script submitit would submit for `profile` (for --dry-run and the docs); an
    array of `array_size` tasks when given. Uses submitit's own script builder."""
    from submitit.slurm.slurm import _make_sbatch_string  # private, but the one that writes the script

    parameters = profile.submitit_parameters()
    if array_size:
        parameters["map_count"] = array_size
    return _make_sbatch_string(command=f"python -u -m submitit.core._submit {Path(folder) / '%j'}",
                               folder=str(Path(folder) / "%j"), job_name=job_name, **parameters)
