"""Publishing a stage's output directories to the object store, one job: upload, check what was
stored, and remember the pointer that replaces the bytes in the KFP artifact.

    publisher = Publisher(exp, "sft", outputs, store, published)
    pointer = publisher.publish(outputs["model"])   # None without a store
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1vflow.config import Experiment


def locate_output(model_dir: str | Path,
                  outputs: Mapping[str, str | Path]) -> tuple[str, str] | None:
    """(output name, path relative to it: '.' for the output itself) of the first of `outputs`
    that holds `model_dir`; None when none does. Paths are compared resolved."""
    model_dir = Path(model_dir).resolve()
    for name, root in outputs.items():
        root = Path(root).resolve()
        if model_dir.is_relative_to(root):
            return name, model_dir.relative_to(root).as_posix()
    return None


@dataclass
class Publisher:
    """Uploads directories of one stage's outputs; `published` (model dir -> pointer) is the
    stage context's own dict, which the runtime reads to write pointers into the artifacts."""

    exp: Experiment
    stage: str
    outputs: Mapping[str, Path]
    store: Any  # an r1vflow.storage object store, or None (bytes travel in KFP artifacts)
    published: dict[Path, dict]

    def object_prefix(self, model_dir: Path, suffix: str = "") -> str:
        """The object-store prefix of `model_dir`: named after the output that holds it (else
        the directory's own name), plus `suffix`."""
        from r1vflow.storage.pointers import object_prefix

        found = locate_output(model_dir, self.outputs)  # else: a model outside the outputs
        relpath = model_dir.name if found is None else (
            found[0] if found[1] == "." else f"{found[0]}/{found[1]}")
        return object_prefix(self.exp, self.stage, relpath + suffix)

    def publish(self, model_dir: Path, suffix: str = "") -> dict | None:
        """Upload a directory of this stage's outputs to the object store and check the stored
        manifest; its pointer (None without a store) replaces the bytes in the KFP artifact."""
        if self.store is None:
            return None
        from r1vflow.storage import StoreError, manifest_digest
        from r1vflow.storage.pointers import publish

        model_dir = Path(model_dir).resolve()
        pointer = publish(self.store, model_dir, self.object_prefix(model_dir, suffix))
        stored = manifest_digest(self.store.read_manifest(pointer["uri"]))
        if stored != pointer["manifest_sha256"]:
            raise StoreError(f"{pointer['uri']}: the stored manifest ({stored[:12]}...) is not "
                             f"the one just uploaded ({pointer['manifest_sha256'][:12]}...)")
        self.published[model_dir] = pointer
        return pointer
