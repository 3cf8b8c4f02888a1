"""The engines of one database on a node, one layer above the network.

`database.Database` holds a database's session, log and its role's engine:
`principal` (statements in, log records out) or `mirror` (log records in, redo).
The sessions between nodes: `principal_session` (the principal's link to its
mirror: seeding, shipping, acks), `mirror_session` (the mirror's side of that
link: hello, hardening, redo) and `witness_link` (a partner's link to the
witness); `witness` is the witness's side. `role_change` carries out what
`mirrord.core.roles` decides. `page_repair`, `checkmirror` and `monitor` work
on a database whatever its role.

Layers, lowest first, each importing only those below it (tests/test_layers.py):
core (pure decisions), storage (files), net (connections and frames),
engine (this package), and the node (mirrord's top-level modules).
"""
