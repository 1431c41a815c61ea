"""The input schema a bundle was trained on: feature names and dtypes, or an image shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anomaly.errors import BundleError


@dataclass(frozen=True)
class Schema:
    """What a record must look like to be scored by a bundle."""

    kind: str
    feature_names: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    image_shape: tuple[int, int, int] | None = None

    @classmethod
    def tabular(cls, feature_names: list[str]) -> Schema:
        return cls("tabular", list(feature_names), ["float64"] * len(feature_names))

    @classmethod
    def image(cls, height: int, width: int, channels: int) -> Schema:
        return cls("image", image_shape=(int(height), int(width), int(channels)))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one record as the detector sees it."""
        if self.kind == "image":
            return tuple(self.image_shape)
        return (len(self.feature_names),)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind == "image":
            data["image_shape"] = list(self.image_shape)
        else:
            data["features"] = [
                {"name": n, "dtype": d}
                for n, d in zip(self.feature_names, self.dtypes, strict=True)
            ]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        try:
            if data["kind"] == "image":
                h, w, c = (int(v) for v in data["image_shape"])
                return cls.image(h, w, c)
            if data["kind"] == "tabular":
                features = data["features"]
                names = [str(f["name"]) for f in features]
                if not names or len(set(names)) != len(names):
                    raise BundleError("schema feature names are empty or not unique")
                return cls("tabular", names, [str(f["dtype"]) for f in features])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"malformed schema in manifest: {exc!r}") from exc
        raise BundleError(f"unknown schema kind {data.get('kind')!r}")
