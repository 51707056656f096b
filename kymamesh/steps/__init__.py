"""The step kinds of the Kyma patch.

`KINDS` maps a kind name, as used in `patches/kyma.yaml`, to the class that
carries it out. Modules are imported when a kind is first used, so that
`kymamesh --help` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kymamesh.patching import StepFactory

_WHERE = {
    "peer-authentication": "kymamesh.steps.mtls:PeerAuthenticationStep",
    "sidecar-resources": "kymamesh.steps.injector:SidecarResourcesStep",
    "injection-policy": "kymamesh.steps.injector:InjectionPolicyStep",
    "mesh-tracing": "kymamesh.steps.meshconfig:TracingStep",
    "mesh-ext-authz": "kymamesh.steps.meshconfig:ExtAuthzStep",
    "gateway-tls": "kymamesh.steps.tls:GatewayTlsStep",
    "remove-addons": "kymamesh.steps.addons:RemoveAddonsStep",
    "restart-proxies": "kymamesh.steps.proxies:RestartProxiesStep",
}


class _Kinds(Mapping[str, "StepFactory"]):
    def __getitem__(self, kind: str) -> StepFactory:
        module, _, name = _WHERE[kind].partition(":")
        factory: StepFactory = getattr(importlib.import_module(module), name)
        return factory

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


KINDS: Mapping[str, StepFactory] = _Kinds()
