"""`trimesh import-mesher CONF_DIR`: a Mesher / go-chassis conf folder → an equivalent trimesh.yaml.

go-chassis, Mesher's framework, merges every YAML file of the folder into one
key space of dotted keys; we do the same (`keyspace`), map every key we know
(`service`, `routes`, `loadbalance`, `policies`) and warn about every key we do
not, naming its file and key (`unmapped`): nothing is dropped without a word.
Where Mesher's semantics and ours differ, the output says what Mesher did
(docs/mesher-migration.md).

`read_folder` is the only I/O; `convert` is pure.
"""

from __future__ import annotations

from trimesh.mesher.command import add_import_command, convert, render, run_import_command
from trimesh.mesher.keyspace import FILE_ORDER, MesherImportError, load_yaml, read_folder

__all__ = [
    "FILE_ORDER",
    "MesherImportError",
    "add_import_command",
    "convert",
    "load_yaml",
    "read_folder",
    "render",
    "run_import_command",
]
