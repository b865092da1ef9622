"""The client's pass from a delimited ``/federate`` answer to the upload body, compiled where it
covers the input, else the reference (docs/architecture.md, "The client's pass").

This module imports neither protobuf nor the Python transforms until the reference has to run:
the client's memory is budgeted (docs/architecture.md, "The client's footprint").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from telemeter._clientpass import Transforms
from telemeter.transforms import DAY_MS, label_ok

__all__ = ["ClientPass", "Cycle", "Transformed"]


@dataclass(frozen=True, slots=True)
class Transformed:
    """An upload body (delimited MetricFamily messages) and what the transforms did."""

    body: bytes
    families: int
    scraped: int  # samples in the scraped families
    dropped: int  # of those, dropped as invalid


@dataclass(frozen=True, slots=True)
class Cycle:
    """What one push cycle brings to the transforms: the upload token's labels, the time (the
    age check) and the limit on families (``--limit-bytes``, as the Go client has it)."""

    token_labels: Mapping[str, str]
    now_ms: int
    max_families: int
    max_age_ms: int = DAY_MS


class ClientPass:
    """The transforms of one configuration, from a delimited ``/federate`` answer to the body.

    The compiled pass (`telemeter._clientpass`) runs where it covers the input, which is what
    Prometheus writes; elsewhere :meth:`reference` runs, so the body is the same either way
    (docs/architecture.md, "The client's pass").
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, str],
        renames: Mapping[str, str],
        anonymize_labels: Sequence[str],
        salt: str,
    ) -> None:
        self.labels, self.renames, self.salt = dict(labels), dict(renames), salt
        self.anonymize_labels = tuple(anonymize_labels)
        self.labels_ok = all(label_ok(name, value) for name, value in labels.items())
        self._fast = Transforms(self)

    def run(self, data: bytes, cycle: Cycle) -> Transformed:
        """Transform ``data``; raise InvalidPayload or TooLarge as :func:`read_families` does."""
        return self.compiled(data, cycle) or self.reference(data, cycle)

    def compiled(self, data: bytes, cycle: Cycle) -> Transformed | None:
        """The compiled pass alone: None where it does not cover ``data``."""
        out = self._fast.run(
            data, cycle.token_labels, cycle.now_ms, cycle.max_age_ms, cycle.max_families
        )
        return None if out is None else Transformed(*out)

    def reference(self, data: bytes, cycle: Cycle) -> Transformed:
        """The specification of :meth:`run`: decode, :func:`transform_families`, encode."""
        # Imported here: the client runs without protobuf unless the compiled pass declines
        # (docs/architecture.md, "The client's footprint").
        from telemeter.delimited import read_families, write_families
        from telemeter.transforms import transform_families

        families = read_families(data, max_families=cycle.max_families)
        result = transform_families(
            families,
            labels=self.labels,
            renames=self.renames,
            anonymize_labels=self.anonymize_labels,
            salt=self.salt,
            token_labels=cycle.token_labels,
            now_ms=cycle.now_ms,
            max_age_ms=cycle.max_age_ms,
        )
        return Transformed(
            body=write_families(result.families),
            families=len(result.families),
            scraped=sum(len(family.metric) for family in families),
            dropped=result.dropped,
        )
