"""The step kinds of the Kyma patch.

`KINDS` maps a kind name, as used in `patches/kyma.yaml`, to the class that
carries it out. It is a typed table: mypy checks that every class in it is a
`Step` (its `PARAMS`, `preflight` and `check`), so a kind that does not keep the
contract fails the type check, not a run. The CLI imports this package only when
a command runs the patch, so that `kymamesh --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from kymamesh.steps.addons import RemoveAddonsStep
from kymamesh.steps.base import Change, Step, StepContext, StepKind
from kymamesh.steps.components import ComponentsStep
from kymamesh.steps.identity import IdentityStep
from kymamesh.steps.injector import ImageHubStep, InjectionPolicyStep, SidecarResourcesStep
from kymamesh.steps.meshconfig import ExtAuthzStep, MeshSettingsStep, TracingStep
from kymamesh.steps.meshidentity import MeshIdentityStep
from kymamesh.steps.mtls import PeerAuthenticationStep
from kymamesh.steps.netpol import NetworkPoliciesStep
from kymamesh.steps.proxies import RestartProxiesStep
from kymamesh.steps.tls import GatewayTlsStep

__all__ = ["KINDS", "Change", "Step", "StepContext", "StepKind"]

KINDS: Final[Mapping[str, StepKind]] = MappingProxyType(
    {
        "peer-authentication": PeerAuthenticationStep,
        "sidecar-resources": SidecarResourcesStep,
        "image-hub": ImageHubStep,
        "injection-policy": InjectionPolicyStep,
        "mesh-tracing": TracingStep,
        "mesh-ext-authz": ExtAuthzStep,
        "mesh-settings": MeshSettingsStep,
        "mesh-components": ComponentsStep,
        "network-policies": NetworkPoliciesStep,
        "mesh-identity": MeshIdentityStep,
        "gateway-tls": GatewayTlsStep,
        "remove-addons": RemoveAddonsStep,
        "identity": IdentityStep,
        "restart-proxies": RestartProxiesStep,
    }
)
