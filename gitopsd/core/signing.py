"""What a pack signature covers: the ClusterPack ``spec`` as Go's ``json.Marshal`` writes it.

Because the spec holds the checksum and every artifact digest, the Ed25519 signature over these
bytes covers the artifact too. Go tenants (ontai conductor) verify the same bytes.
"""

from __future__ import annotations

import json

from gitopsd.core import gojson
from gitopsd.model import pack


def payload(cluster_pack: pack.ClusterPack) -> bytes:
    return gojson.marshal(cluster_pack.spec())


def payload_of_spec_json(spec_json: str) -> bytes:
    return gojson.marshal(json.loads(spec_json, parse_int=float))
