"""The stage spec: everything one stage run reads, resolved by the orchestrator, in one file.

A spec holds exactly the config sections the stage declares, its inputs as (path, content
hash), every ancestor's artifact (for lineage figures), and where to write. The stage reads
nothing else: no environment, no profile lookup. Locally and on a rented GPU alike the stage is

    python -m wikigpt_core.run STAGE --spec FILE

Versions, all derived from what the spec holds:

- `code_version` = "<stage version>-<hash of its config sections>" (plus the dump source's
  fingerprint for `wiki_dump`). It is what Dagster records as the asset's code version, and
  the stage refuses to run when the spec's config does not hash to it.
- `version` = hash of the code version and the inputs' content hashes. It names the output
  directory `$WIKIGPT_HOME/<profile>/<asset>/<version>/`, so a version, once written, is never
  overwritten, and finding it complete with its bytes intact is a cache hit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wikigpt_core.artifacts import MANIFEST, manifest_hash, read_manifest
from wikigpt_core.config import section_from_dict

SPEC_FORMAT = 1


class SpecError(ValueError):
    """The spec does not describe a run this stage can do; the message says what to fix."""


def canonical_tables(tables: dict[str, Any]) -> dict[str, Any]:
    """Config tables as JSON gives them back (tuples as lists, paths as strings), so a hash
    taken before writing a spec equals the hash of the spec read back."""
    return json.loads(json.dumps(tables, sort_keys=True, default=str))


def config_hash(tables: dict[str, Any]) -> str:
    blob = json.dumps(canonical_tables(tables), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def code_version(stage_version: str, tables: dict[str, Any], fingerprint: str = "") -> str:
    return f"{stage_version}-{config_hash(tables)}" + (f"-{fingerprint}" if fingerprint else "")


def version_hash(stage: str, code_version_: str, input_hashes: dict[str, str]) -> str:
    """Names the output directory: same code, same config, same input bytes -> same name."""
    blob = json.dumps({"stage": stage, "code_version": code_version_, "inputs": input_hashes},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def input_hash(path: Path) -> str | None:
    """An input's content hash: from its manifest when it is a pipeline artifact, else from its
    bytes (a directory built by hand and passed with --input). None if it does not exist."""
    from wikigpt_core.artifacts import content_hash

    recorded = manifest_hash(path)
    if recorded is not None:
        return recorded
    return content_hash(path) if Path(path).is_dir() else None


def verify_input_bytes(name: str, path: Path) -> None:
    """An upstream artifact's bytes match its manifest, else a SpecError naming it and what to do.
    A hand-built input without a manifest was hashed whole by `input_hash` already."""
    from wikigpt_core.integrity import CorruptArtifact, verify_artifact

    if not (Path(path) / MANIFEST).is_file():
        return
    try:
        verify_artifact(path, name)
    except CorruptArtifact as e:
        raise SpecError(f"input {e}. Rematerialize {name}: its corrupt version is then moved "
                        "aside and recomputed.") from None


@dataclass(frozen=True)
class ArtifactRef:
    path: Path
    content_hash: str

    def to_json(self) -> dict[str, str]:
        return {"path": str(self.path), "content_hash": self.content_hash}


@dataclass
class StageSpec:
    stage: str
    profile: str
    code_version: str
    config: dict[str, dict[str, Any]]
    """Exactly the sections the stage declares, as plain tables."""
    inputs: dict[str, ArtifactRef]
    """The stage's direct upstream artifacts."""
    lineage: dict[str, ArtifactRef]
    """Every ancestor's artifact (the direct inputs included), for figures such as the model card's."""
    out: Path
    work: Path
    fingerprint: str = ""
    services: dict[str, str] = field(default_factory=dict)
    """Endpoints brought up for this run only (e.g. `teacher_url`); they are not part of the
    version, since the same model behind another address gives the same data."""
    recompute: bool = False
    """Run the stage even when its version is published and intact, to check that it reproduces
    the published bytes (the published version is kept either way). Not part of the version."""

    # --- what the stage reads ---
    def section(self, name: str) -> Any:
        if name not in self.config:
            raise SpecError(f"stage {self.stage!r} reads config section {name!r}, which its spec "
                            f"does not hold (it holds {sorted(self.config)}); declare it in "
                            "wikigpt_core/stages.py")
        return section_from_dict(name, self.config[name])

    def input(self, name: str) -> Path:
        if name not in self.inputs:
            raise SpecError(f"stage {self.stage!r} has no input {name!r} (inputs: {sorted(self.inputs)}); "
                            "declare it in wikigpt_core/stages.py")
        return self.inputs[name].path

    def manifest(self, name: str) -> dict[str, Any]:
        """An ancestor's manifest (stats, content hash)."""
        ref = self.inputs.get(name) or self.lineage.get(name)
        if ref is None:
            raise SpecError(f"{name!r} is not an ancestor of {self.stage!r}")
        return read_manifest(ref.path)

    @property
    def version(self) -> str:
        return version_hash(self.stage, self.code_version,
                            {n: r.content_hash for n, r in sorted(self.inputs.items())})

    # --- checks before running ---
    def verify(self, stage_version: str, sections: tuple[str, ...]) -> None:
        """Refuse a spec whose config is not the one its code_version was hashed from, or whose
        inputs changed since it was resolved."""
        if set(self.config) != set(sections):
            raise SpecError(f"spec for {self.stage!r} holds sections {sorted(self.config)}, but the "
                            f"stage reads {sorted(sections)}; re-resolve the spec")
        expected = code_version(stage_version, self.config, self.fingerprint)
        if expected != self.code_version:
            raise SpecError(
                f"spec for {self.stage!r} says code_version {self.code_version}, but its config and "
                f"stage version hash to {expected}: the config was edited after the spec was "
                "resolved. Re-resolve it (materialize the asset again) instead of editing it.")
        for name, ref in {**self.lineage, **self.inputs}.items():
            actual = input_hash(ref.path)
            if actual is None:
                raise SpecError(f"input {name!r} at {ref.path} does not exist; materialize {name} first")
            if actual != ref.content_hash:
                raise SpecError(f"input {name!r} at {ref.path} now hashes to {str(actual)[:12]}, not "
                                f"{ref.content_hash[:12]} as resolved; re-resolve the spec")

    def verify_input_bytes(self) -> None:
        """Before the stage reads its direct inputs: their bytes match their manifests (a cache
        hit reads none, so it need not pay for this). Lineage-only ancestors are not read."""
        for name, ref in self.inputs.items():
            verify_input_bytes(name, ref.path)

    def relocated(self, where: Callable[[str], str]) -> "StageSpec":
        """The same spec with every path mapped by `where` (e.g. to a rented box's layout,
        where `~` expands when the stage reads it). The version is unchanged: it hashes the
        inputs' content, not their paths."""
        def refs(table: dict[str, ArtifactRef]) -> dict[str, ArtifactRef]:
            return {n: ArtifactRef(Path(where(str(r.path))), r.content_hash) for n, r in table.items()}

        return dataclasses.replace(self, inputs=refs(self.inputs), lineage=refs(self.lineage),
                                   out=Path(where(str(self.out))), work=Path(where(str(self.work))))

    # --- file form ---
    def to_json(self) -> dict[str, Any]:
        return {"format": SPEC_FORMAT, "stage": self.stage, "profile": self.profile,
                "code_version": self.code_version, "fingerprint": self.fingerprint,
                "version": self.version, "config": canonical_tables(self.config),
                "inputs": {n: r.to_json() for n, r in self.inputs.items()},
                "lineage": {n: r.to_json() for n, r in self.lineage.items()},
                "out": str(self.out), "work": str(self.work), "services": dict(self.services),
                "recompute": self.recompute}

    def write(self, path: Path) -> Path:
        from wikigpt_core.artifacts import atomic_write_json

        atomic_write_json(Path(path), self.to_json())
        return Path(path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StageSpec":
        if data.get("format") != SPEC_FORMAT:
            raise SpecError(f"spec format {data.get('format')!r} is not {SPEC_FORMAT}; re-resolve it")

        def refs(table: dict[str, Any]) -> dict[str, ArtifactRef]:
            return {n: ArtifactRef(Path(r["path"]).expanduser(), r["content_hash"]) for n, r in table.items()}

        try:
            return cls(stage=data["stage"], profile=data["profile"], code_version=data["code_version"],
                       config=data["config"], inputs=refs(data["inputs"]), lineage=refs(data["lineage"]),
                       out=Path(data["out"]).expanduser(), work=Path(data["work"]).expanduser(),
                       fingerprint=data.get("fingerprint", ""), services=data.get("services", {}),
                       recompute=bool(data.get("recompute", False)))
        except KeyError as e:
            raise SpecError(f"spec is missing the field {e.args[0]!r}") from None

    @classmethod
    def read(cls, path: Path) -> "StageSpec":
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise SpecError(f"spec file {path} does not exist") from None
        except json.JSONDecodeError as e:
            raise SpecError(f"spec file {path} is not valid JSON: {e}") from None
        return cls.from_json(data)
