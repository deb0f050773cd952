"""What the overlay driver saves per mount: resolved layers and the options to pass again."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar, Self

import attrs
from criu_fw.driver import Dev, DriverState, NamedDirectory
from criu_fw.proto import overlay_pb2
from google.protobuf.message import Message

from .layers import ResolvedLayer, Verdict
from .options import LayerSpec, Role

_ROLE_TO_PB = {
    Role.LOWER: overlay_pb2.OVERLAY_ROLE_LOWER,
    Role.DATA: overlay_pb2.OVERLAY_ROLE_DATA,
    Role.UPPER: overlay_pb2.OVERLAY_ROLE_UPPER,
    Role.WORK: overlay_pb2.OVERLAY_ROLE_WORK,
}
_PB_TO_ROLE = {v: k for k, v in _ROLE_TO_PB.items()}


def _layers(value: Iterable[ResolvedLayer]) -> tuple[ResolvedLayer, ...]:
    return tuple(value)


def _features(value: Iterable[tuple[str, str | None]]) -> tuple[tuple[str, str | None], ...]:
    return tuple((str(k), v) for k, v in value)


@attrs.frozen
class OverlayState(DriverState):
    """``parse_mount``'s result for an overlay; ``rebuild_mount`` builds its plan from it."""

    MESSAGE: ClassVar[type[Message]] = overlay_pb2.overlay_state

    #: Upper, work, then the lowers topmost first (data-only last).
    layers: tuple[ResolvedLayer, ...] = attrs.field(converter=_layers)
    features: tuple[tuple[str, str | None], ...] = attrs.field(converter=_features, default=())
    readonly: bool = False
    new_api: bool = False
    external_key: str | None = None

    def role(self, role: Role) -> tuple[ResolvedLayer, ...]:
        return tuple(layer for layer in self.layers if layer.spec.role is role)

    def directories(self) -> tuple[NamedDirectory, ...]:
        return tuple(
            NamedDirectory(layer.spec.role.value, layer.spec.option, layer.mnt_id, layer.path)
            for layer in self.layers
        )

    def to_message(self) -> overlay_pb2.overlay_state:
        msg = overlay_pb2.overlay_state(readonly=self.readonly, new_api=self.new_api)
        if self.external_key is not None:
            msg.external_key = self.external_key
        for layer in self.layers:
            pb = msg.layers.add(
                role=_ROLE_TO_PB[layer.spec.role],
                shown=os.fsencode(layer.spec.text),
                option=layer.spec.option,
                path=os.fsencode(layer.path),
                dev_major=layer.dev.major,
                dev_minor=layer.dev.minor,
                ino=layer.ino,
                found=layer.found,
                verdict=int(layer.verdict),
            )
            if layer.mnt_id is not None:
                pb.mnt_id = layer.mnt_id
        for name, value in self.features:
            feature = msg.features.add(name=name)
            if value is not None:
                feature.value = value
        return msg

    @classmethod
    def from_message(cls, message: Any) -> Self:
        layers = []
        for pb in message.layers:
            text = os.fsdecode(pb.shown)
            spec = LayerSpec(_PB_TO_ROLE[pb.role], text, text, pb.option)
            layers.append(
                ResolvedLayer(
                    spec=spec,
                    mnt_id=pb.mnt_id if pb.HasField("mnt_id") else None,
                    path=os.fsdecode(pb.path),
                    dev=Dev(pb.dev_major, pb.dev_minor),
                    ino=pb.ino,
                    found=pb.found,
                    verdict=Verdict(pb.verdict),
                )
            )
        features = tuple(
            (f.name, f.value if f.HasField("value") else None) for f in message.features
        )
        return cls(
            layers=tuple(layers),
            features=features,
            readonly=message.readonly,
            new_api=message.new_api,
            external_key=message.external_key if message.HasField("external_key") else None,
        )
