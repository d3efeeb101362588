"""What a cohort run asks of its workers: the settings, the model, and one job per input file.

Everything here is plain data (picklable, sent to Dask workers). A result is identified by its
``fingerprint``: the settings that change a map, the model file's hash and the source file's
size and modification time. A rerun skips an output whose sidecar records the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..options import DEFAULT_INTERPOLATION, DEFAULT_THRESHOLD, INTERPOLATIONS
from ..registry import AUTO, METHODS, SETTINGS
from .inputs import CohortError, Input, Outputs

#: timepoints of a 4D run per task (a run longer than this is split into chunks)
DEFAULT_CHUNK = 32
DEFAULT_BATCH = 8


@dataclass(frozen=True)
class Settings:
    """``explain`` settings for every input, and how the work is cut."""

    methods: tuple[str, ...] = (AUTO,)
    layer: str | None = None
    pooling: str = SETTINGS["pooling"].default
    threshold: float | None = DEFAULT_THRESHOLD
    upsample: str = "trilinear"
    target: int | None = None
    baseline: str | None = None
    steps: int = SETTINGS["steps"].default
    occlusion: str = SETTINGS["occlusion"].default
    relevance_block: int = SETTINGS["relevance_block"].default
    device: str = "cpu"
    batch_size: int = DEFAULT_BATCH  # timepoints per forward pass (halved on out-of-memory)
    chunk: int = DEFAULT_CHUNK  # timepoints per task
    atlas: str | None = None
    atlas_sha256: str | None = None
    atlas_names: str | None = None  # a lookup table naming the atlas' labels (dseg.tsv, LUT, FSL XML)
    atlas_names_sha256: str | None = None
    threads: int | None = None  # torch threads per worker process (None: torch's default)
    interpolation: str = DEFAULT_INTERPOLATION  # into the model's grid and back, for inputs on other grids

    def __post_init__(self):
        for method in self.methods:
            if method not in (*METHODS, AUTO):
                raise CohortError(f"unknown method {method!r}; choose from: {', '.join((*METHODS, AUTO))}")
        if not self.methods:
            raise CohortError("no method was given")
        if self.chunk < 1 or self.batch_size < 1:
            raise CohortError("--chunk and --batch-size must be positive whole numbers")
        if self.interpolation not in INTERPOLATIONS:
            raise CohortError(f"unknown interpolation {self.interpolation!r}; choose one of: {', '.join(INTERPOLATIONS)}")

    def result_settings(self, method: str) -> dict:
        """The settings that make one method's map what it is (recorded in its sidecar)."""
        out = {"method": method, "layer": self.layer, "pooling": self.pooling, "threshold": self.threshold,
               "upsample": self.upsample, "target": self.target, "baseline": self.baseline,
               **self.method_settings(), "atlas_sha256": self.atlas_sha256, "interpolation": self.interpolation}
        if self.atlas_names_sha256:  # named labels change the tables (outputs without names keep theirs)
            out["atlas_names_sha256"] = self.atlas_names_sha256
        return out

    def method_settings(self) -> dict:
        """The settings only some methods read (``registry.SETTINGS`` beyond layer, pooling, baseline)."""
        return {"steps": self.steps, "occlusion": self.occlusion, "relevance_block": self.relevance_block}


@dataclass(frozen=True)
class ModelRef:
    """A model file as workers load it, identified by its content."""

    path: str
    sha256: str
    config: str | None = None
    config_sha256: str | None = None


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_ref(path: str | os.PathLike, config: str | os.PathLike | None = None) -> ModelRef:
    """Hash the model (and a separate config) once, in the client, before any work starts."""
    from ..models.config import find_config_beside

    path = Path(path)
    if not path.is_file():
        raise CohortError(f"no model file {path}")
    config = Path(config) if config else find_config_beside(path)
    return ModelRef(path=str(path.resolve()), sha256=file_sha256(path),
                    config=str(config.resolve()) if config else None,
                    config_sha256=file_sha256(config) if config else None)


def source_identity(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fingerprint(settings: dict, model: ModelRef, source: dict) -> str:
    """A short hash of what makes an output what it is."""
    text = json.dumps({"settings": settings, "model": [model.sha256, model.config_sha256], "source": source},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Job:
    """One input file and the methods still to explain it with.

    timepoints: T for a 4D run, None for a 3D volume (read from the header when planning).
    """

    input: Input
    methods: tuple[str, ...]
    out_dir: str
    model: ModelRef
    settings: Settings
    source: dict = field(default_factory=dict)
    timepoints: int | None = None

    def outputs(self, method: str) -> Outputs:
        return self.input.outputs(self.out_dir, method)

    def fingerprint(self, method: str) -> str:
        return fingerprint(self.settings.result_settings(method), self.model, self.source)

    @property
    def chunks(self) -> list[tuple[int, int]]:
        """``[(t0, t1), ...]`` timepoint ranges, one task each; ``[(0, 1)]`` for a 3D volume."""
        if self.timepoints is None:
            return [(0, 1)]
        step = self.settings.chunk
        return [(t, min(t + step, self.timepoints)) for t in range(0, self.timepoints, step)]

    @property
    def volumes(self) -> int:
        return self.timepoints or 1

    @property
    def parts_folder(self) -> Path:
        """Where a chunked run keeps finished chunks until the whole map is written."""
        key = hashlib.sha256("|".join(self.fingerprint(m) for m in self.methods).encode()).hexdigest()[:12]
        return Path(self.out_dir) / ".g3dvit-parts" / f"{self.input.stem}-{key}"


def is_done(job: Job, method: str) -> bool:
    """True when this method's map and sidecar exist, the sidecar records the same fingerprint, and
    the map is the one it describes (its size, as recorded when both were written together)."""
    outputs = job.outputs(method)
    if not (outputs.heatmap.is_file() and outputs.sidecar.is_file()):
        return False
    try:
        recorded = json.loads(outputs.sidecar.read_text())
        size = outputs.heatmap.stat().st_size
    except (OSError, ValueError):
        return False
    if recorded.get("map_bytes") is not None and recorded["map_bytes"] != size:
        return False
    return recorded.get("fingerprint") == job.fingerprint(method)


def plain(obj) -> dict:
    """A dataclass as JSON-friendly values."""
    return json.loads(json.dumps(asdict(obj), default=str))
