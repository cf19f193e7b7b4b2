"""The inventory (sites.yaml): which sites and hosts should exist, with their human names.

Identities are slugs; names, counties and townships are free text (Chinese included).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from collector.alerting.routing import Contact
from collector.alerting.schedule import Staffing
from outpost.wire import SLUG_RE

__all__ = ["Inventory", "Site"]

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_RE.pattern)]


class Site(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    id: Slug
    name: str = ""
    county: str = ""
    township: str = ""
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    timezone: str = "Asia/Shanghai"
    hosts: list[Slug] = msgspec.field(default_factory=list)
    # When IT staff are on site (none: never), and who to call there who is not IT staff.
    staffing: Staffing = msgspec.field(default_factory=Staffing)
    contact: Contact = msgspec.field(default_factory=Contact)

    def __post_init__(self) -> None:
        from collector.alerting.schedule import time_zone

        time_zone(self.timezone)  # ValueError naming the zone when it is unknown


class Inventory(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    sites: list[Site] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        first: dict[str, int] = {}
        for index, site in enumerate(self.sites):
            if site.id in first:  # two sites' series would collide on every scrape
                raise ValueError(
                    f"sites[{index}].id: {site.id!r} is already the id of sites[{first[site.id]}]"
                )
            first[site.id] = index

    def only(self, sites: list[str]) -> Inventory:
        """The sites among ``sites`` (a shard's); all of them when ``sites`` is empty."""
        if not sites:
            return self
        return Inventory([s for s in self.sites if s.id in set(sites)])

    def expected_hosts(self) -> set[tuple[str, str]]:
        return {(site.id, host) for site in self.sites for host in site.hosts}
