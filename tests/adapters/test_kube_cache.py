"""The watch cache's change feed: which basePackNames had an object changed since a version.

Watch events, our own writes and relists all go through ``Informer.upsert``/``remove``/``relist``;
the feed must name the base of every object they change (before and after), and nothing else.
The watch itself against a real API server is in ``test_kube.py``.
"""

from __future__ import annotations

from typing import Any

from gitopsd.adapters.kube.cache import Informer
from gitopsd.adapters.kube.connection import PACK_INSTANCES


def obj(name: str, base: str, rv: int, version: str = "1.0.0") -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)},
            "spec": {"basePackName": base, "clusterPackRef": {"version": version}}}


class Listing:
    """Answers a relist with ``items`` at resourceVersion ``rv``."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.rv = 0
        self.custom = self

    def list_namespaced_custom_object(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("called through send")

    def send(self, *args: object, **kwargs: object) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": str(self.rv)}, "items": [dict(i) for i in self.items]}


def informer(listing: Listing) -> Informer:
    return Informer(listing, PACK_INSTANCES, "ns", watch_timeout=1, backoff=(0.1, 1.0))  # type: ignore[arg-type]


def test_watch_events_and_own_writes_name_the_bases_they_change() -> None:
    cache = informer(Listing())
    start = cache.version
    cache.upsert(obj("web-a", "web", 5))
    cache.upsert(obj("api-a", "api", 6))
    middle = cache.version
    cache.upsert(obj("web-a", "web", 4))  # older than what the cache holds: no change
    assert cache.changed_since(middle) == set()
    cache.remove("api-a", 7)
    assert cache.changed_since(start) == {"web", "api"}
    assert cache.changed_since(middle) == {"api"}
    assert cache.changed_since(cache.version) == set()


def test_an_object_moved_to_another_base_names_both() -> None:
    cache = informer(Listing())
    cache.upsert(obj("x-a", "web", 5))
    before = cache.version
    cache.upsert(obj("x-a", "api", 6))
    assert cache.changed_since(before) == {"web", "api"}


def test_a_relist_names_the_bases_whose_objects_differ() -> None:
    listing = Listing()
    listing.items, listing.rv = [obj("web-a", "web", 5), obj("api-a", "api", 6), obj("db-a", "db", 7)], 7
    cache = informer(listing)
    cache.relist()
    before = cache.version
    listing.items, listing.rv = [obj("web-a", "web", 5), obj("api-a", "api", 9, "1.1.0")], 9  # api edited, db deleted
    cache.relist()
    assert cache.changed_since(before) == {"api", "db"}
    again = cache.version
    cache.relist()  # the same listing: nothing changed
    assert cache.version == again and cache.changed_since(again) == set()
