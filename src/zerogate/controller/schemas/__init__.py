"""Request and response bodies of the REST API, with all input validation.

Every string a client sends is parsed here once into a checked value; a
request that fails gets a 422 naming the field and the reason, and reaches no
service code. References between objects are by name (names are unique).

Request models are strict (:class:`Strict`): JSON ``0`` is not ``false`` and
``true`` is not ``1``, so a typo cannot quietly mean something else. The
checked field types (names, free text, addresses, keys) are in fields.py.

One module per resource; every model is importable from here, as
``from zerogate.controller import schemas as s; s.GatewayCreate``.
"""

from zerogate.controller.reports import DeviceReport  # the body of POST /v1/report
from zerogate.controller.schemas.accounts import AccountCreate, AccountCreated, AccountOut, AccountUpdate
from zerogate.controller.schemas.audit import AuditOut, AuditVerifyOut
from zerogate.controller.schemas.auth import (
    ActivateRequest,
    BootstrapRequest,
    LoginRequest,
    LoginResponse,
    TokenCreate,
    TokenCreated,
    TokenOut,
    TotpConfirmRequest,
    TotpEnrollment,
)
from zerogate.controller.schemas.base import Strict
from zerogate.controller.schemas.devices import (
    ClientRegisterRequest,
    ClientRegisterResponse,
    ClientSessionOut,
    ComponentStatus,
    DeviceOut,
    EnrollRequest,
    EnrollResponse,
    ProvisioningKeyCreate,
    ProvisioningKeyCreated,
    ProvisioningKeyOut,
    StatusOut,
)
from zerogate.controller.schemas.groups import (
    GroupCreate,
    GroupMembersChange,
    GroupMembersChanged,
    GroupOut,
    GroupUpdate,
)
from zerogate.controller.schemas.policies import (
    ApplicationCreate,
    ApplicationOut,
    ApplicationUpdate,
    DestinationIn,
    ExplainRequest,
    ExplainResponse,
    PolicyCreate,
    PolicyOut,
    PolicyUpdate,
    TimeWindowIn,
)
from zerogate.controller.schemas.pool import AddressPoolOut, AddressPoolUpdate
from zerogate.controller.schemas.segment import (
    AssetCreate,
    AssetOut,
    ExtendRequest,
    FlowOut,
    JumpHosts,
    JumpHostsOut,
    ModeRequest,
    ProposalOut,
    RuleCreate,
    RuleEdit,
    RuleOut,
    SegmentReportResult,
    SegmentServerCreate,
    SegmentServerOut,
    SegmentServerUpdate,
    SimulateRequest,
    SimulationOut,
    SourceVerdictOut,
    TrustRequest,
)
from zerogate.controller.schemas.sites import (
    BANDWIDTH_CLASSES,
    ConnectorGroupBody,
    ConnectorGroupCreate,
    ConnectorGroupOut,
    ConnectorGroupUpdate,
    ConnectorOut,
    ConnectorUpdate,
    GatewayCreate,
    GatewayOut,
    GatewayUpdate,
)

__all__ = [
    "BANDWIDTH_CLASSES",
    "AccountCreate",
    "AccountCreated",
    "AccountOut",
    "AccountUpdate",
    "ActivateRequest",
    "AddressPoolOut",
    "AddressPoolUpdate",
    "ApplicationCreate",
    "ApplicationOut",
    "ApplicationUpdate",
    "AssetCreate",
    "AssetOut",
    "AuditOut",
    "AuditVerifyOut",
    "BootstrapRequest",
    "ClientRegisterRequest",
    "ClientRegisterResponse",
    "ClientSessionOut",
    "ComponentStatus",
    "ConnectorGroupBody",
    "ConnectorGroupCreate",
    "ConnectorGroupOut",
    "ConnectorGroupUpdate",
    "ConnectorOut",
    "ConnectorUpdate",
    "DestinationIn",
    "DeviceOut",
    "DeviceReport",
    "EnrollRequest",
    "EnrollResponse",
    "ExplainRequest",
    "ExplainResponse",
    "ExtendRequest",
    "FlowOut",
    "GatewayCreate",
    "GatewayOut",
    "GatewayUpdate",
    "GroupCreate",
    "GroupMembersChange",
    "GroupMembersChanged",
    "GroupOut",
    "GroupUpdate",
    "JumpHosts",
    "JumpHostsOut",
    "LoginRequest",
    "LoginResponse",
    "ModeRequest",
    "PolicyCreate",
    "PolicyOut",
    "PolicyUpdate",
    "ProposalOut",
    "ProvisioningKeyCreate",
    "ProvisioningKeyCreated",
    "ProvisioningKeyOut",
    "RuleCreate",
    "RuleEdit",
    "RuleOut",
    "SegmentReportResult",
    "SegmentServerCreate",
    "SegmentServerOut",
    "SegmentServerUpdate",
    "SimulateRequest",
    "SimulationOut",
    "SourceVerdictOut",
    "StatusOut",
    "Strict",
    "TimeWindowIn",
    "TokenCreate",
    "TokenCreated",
    "TokenOut",
    "TotpConfirmRequest",
    "TotpEnrollment",
    "TrustRequest",
]
