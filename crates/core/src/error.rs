//! EC2 errors. Every domain failure carries its exact EC2 error code (EC2_SEMANTICS.md §7) and a
//! message in EC2's wording; the gRPC edge maps the code's [`ErrorClass`] to a status.

use std::fmt;

/// The EC2 error codes amisim produces. `as_str` is the exact wire code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    AuthFailure,
    UnauthorizedOperation,
    DryRunOperation,
    MissingParameter,
    UnknownParameter,
    InvalidParameterValue,
    InvalidParameter,
    InvalidParameterCombination,
    InvalidParameterDependency,
    IdempotentParameterMismatch,
    InvalidNextToken,
    InvalidAmiIdMalformed,
    InvalidAmiIdNotFound,
    InvalidAmiIdUnavailable,
    InvalidAmiNameDuplicate,
    InvalidAmiNameMalformed,
    InvalidAmiAttributeItemValue,
    InvalidSnapshotNotFound,
    InvalidSnapshotIdMalformed,
    InvalidSnapshotInUse,
    InvalidVolumeNotFound,
    InvalidVolumeIdMalformed,
    InvalidVolumeZoneMismatch,
    VolumeInUse,
    IncorrectState,
    InvalidInstanceIdNotFound,
    InvalidInstanceIdMalformed,
    IncorrectInstanceState,
    UnsupportedOperation,
    InvalidBlockDeviceMapping,
    InvalidManifest,
    InvalidRegion,
    InvalidZoneNotFound,
    InvalidRequest,
    InvalidUserIdMalformed,
    InvalidAttachmentNotFound,
    OperationNotPermitted,
    ResourceLimitExceeded,
    SnapshotLimitExceeded,
    PendingSnapshotLimitExceeded,
    ConcurrentSnapshotLimitExceeded,
    SnapshotCreationPerVolumeRateExceeded,
    ConcurrentCreateImageNoRebootLimitExceeded,
    VolumeLimitExceeded,
    InstanceLimitExceeded,
    TagLimitExceeded,
    InvalidTagKeyMalformed,
    InvalidId,
    InternalError,
    Unavailable,
    /// EC2: a KMS key cannot be used in a synchronous path (CreateVolume).
    CustomerKeyHasBeenRevoked,
    // KMS's own error codes (kms.proto): never answered by an EC2 action.
    KmsNotFound,
    KmsDisabled,
    KmsInvalidState,
    KmsAlreadyExists,
    KmsInvalidArn,
    KmsValidation,
    KmsNotAuthorized,
    KmsAccessDenied,
    KmsMalformedPolicyDocument,
    KmsTag,
    KmsInvalidMarker,
}

/// How a code maps onto transport semantics (gRPC status / HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad credentials (HTTP 401; gRPC UNAUTHENTICATED).
    Unauthenticated,
    /// Not allowed (HTTP 403; gRPC PERMISSION_DENIED).
    PermissionDenied,
    /// The request is wrong as written (HTTP 400; gRPC INVALID_ARGUMENT).
    InvalidArgument,
    /// A named resource does not exist (HTTP 400; gRPC NOT_FOUND).
    NotFound,
    /// A resource with that name exists (HTTP 400; gRPC ALREADY_EXISTS).
    AlreadyExists,
    /// The resource or request is in the wrong state, or DryRun (HTTP 400/412; gRPC
    /// FAILED_PRECONDITION).
    FailedPrecondition,
    /// A quota (HTTP 400; gRPC RESOURCE_EXHAUSTED).
    ResourceExhausted,
    /// Server side (HTTP 500; gRPC INTERNAL).
    Internal,
    /// Server side, retry (HTTP 503; gRPC UNAVAILABLE).
    Unavailable,
}

impl ErrorCode {
    /// The exact EC2 error code.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            AuthFailure => "AuthFailure",
            UnauthorizedOperation => "UnauthorizedOperation",
            DryRunOperation => "DryRunOperation",
            MissingParameter => "MissingParameter",
            UnknownParameter => "UnknownParameter",
            InvalidParameterValue => "InvalidParameterValue",
            InvalidParameter => "InvalidParameter",
            InvalidParameterCombination => "InvalidParameterCombination",
            InvalidParameterDependency => "InvalidParameterDependency",
            IdempotentParameterMismatch => "IdempotentParameterMismatch",
            InvalidNextToken => "InvalidNextToken",
            InvalidAmiIdMalformed => "InvalidAMIID.Malformed",
            InvalidAmiIdNotFound => "InvalidAMIID.NotFound",
            InvalidAmiIdUnavailable => "InvalidAMIID.Unavailable",
            InvalidAmiNameDuplicate => "InvalidAMIName.Duplicate",
            InvalidAmiNameMalformed => "InvalidAMIName.Malformed",
            InvalidAmiAttributeItemValue => "InvalidAMIAttributeItemValue",
            InvalidSnapshotNotFound => "InvalidSnapshot.NotFound",
            InvalidSnapshotIdMalformed => "InvalidSnapshotID.Malformed",
            InvalidSnapshotInUse => "InvalidSnapshot.InUse",
            InvalidVolumeNotFound => "InvalidVolume.NotFound",
            InvalidVolumeIdMalformed => "InvalidVolumeID.Malformed",
            InvalidVolumeZoneMismatch => "InvalidVolume.ZoneMismatch",
            VolumeInUse => "VolumeInUse",
            IncorrectState => "IncorrectState",
            InvalidInstanceIdNotFound => "InvalidInstanceID.NotFound",
            InvalidInstanceIdMalformed => "InvalidInstanceID.Malformed",
            IncorrectInstanceState => "IncorrectInstanceState",
            UnsupportedOperation => "UnsupportedOperation",
            InvalidBlockDeviceMapping => "InvalidBlockDeviceMapping",
            InvalidManifest => "InvalidManifest",
            InvalidRegion => "InvalidRegion",
            InvalidZoneNotFound => "InvalidZone.NotFound",
            InvalidRequest => "InvalidRequest",
            InvalidUserIdMalformed => "InvalidUserID.Malformed",
            InvalidAttachmentNotFound => "InvalidAttachment.NotFound",
            OperationNotPermitted => "OperationNotPermitted",
            ResourceLimitExceeded => "ResourceLimitExceeded",
            SnapshotLimitExceeded => "SnapshotLimitExceeded",
            PendingSnapshotLimitExceeded => "PendingSnapshotLimitExceeded",
            ConcurrentSnapshotLimitExceeded => "ConcurrentSnapshotLimitExceeded",
            SnapshotCreationPerVolumeRateExceeded => "SnapshotCreationPerVolumeRateExceeded",
            ConcurrentCreateImageNoRebootLimitExceeded => {
                "ConcurrentCreateImageNoRebootLimitExceeded"
            }
            VolumeLimitExceeded => "VolumeLimitExceeded",
            InstanceLimitExceeded => "InstanceLimitExceeded",
            TagLimitExceeded => "TagLimitExceeded",
            InvalidTagKeyMalformed => "InvalidTagKey.Malformed",
            InvalidId => "InvalidID",
            InternalError => "InternalError",
            Unavailable => "Unavailable",
            CustomerKeyHasBeenRevoked => "CustomerKeyHasBeenRevoked",
            KmsNotFound => "NotFoundException",
            KmsDisabled => "DisabledException",
            KmsInvalidState => "KMSInvalidStateException",
            KmsAlreadyExists => "AlreadyExistsException",
            KmsInvalidArn => "InvalidArnException",
            KmsValidation => "ValidationException",
            KmsNotAuthorized => "NotAuthorizedException",
            KmsAccessDenied => "AccessDeniedException",
            KmsMalformedPolicyDocument => "MalformedPolicyDocumentException",
            KmsTag => "TagException",
            KmsInvalidMarker => "InvalidMarkerException",
        }
    }

    /// The transport class of this code.
    pub fn class(self) -> ErrorClass {
        use ErrorCode::*;
        match self {
            AuthFailure => ErrorClass::Unauthenticated,
            UnauthorizedOperation => ErrorClass::PermissionDenied,
            DryRunOperation => ErrorClass::FailedPrecondition,
            InvalidAmiIdNotFound
            | InvalidSnapshotNotFound
            | InvalidVolumeNotFound
            | InvalidInstanceIdNotFound
            | InvalidAttachmentNotFound
            | InvalidZoneNotFound => ErrorClass::NotFound,
            InvalidAmiNameDuplicate => ErrorClass::AlreadyExists,
            InvalidAmiIdUnavailable
            | InvalidSnapshotInUse
            | VolumeInUse
            | IncorrectState
            | IncorrectInstanceState
            | OperationNotPermitted
            | IdempotentParameterMismatch => ErrorClass::FailedPrecondition,
            ResourceLimitExceeded
            | SnapshotLimitExceeded
            | PendingSnapshotLimitExceeded
            | ConcurrentSnapshotLimitExceeded
            | SnapshotCreationPerVolumeRateExceeded
            | ConcurrentCreateImageNoRebootLimitExceeded
            | VolumeLimitExceeded
            | InstanceLimitExceeded
            | TagLimitExceeded => ErrorClass::ResourceExhausted,
            InternalError => ErrorClass::Internal,
            Unavailable => ErrorClass::Unavailable,
            KmsNotFound => ErrorClass::NotFound,
            KmsAlreadyExists => ErrorClass::AlreadyExists,
            KmsDisabled | KmsInvalidState | CustomerKeyHasBeenRevoked => {
                ErrorClass::FailedPrecondition
            }
            KmsNotAuthorized | KmsAccessDenied => ErrorClass::PermissionDenied,
            _ => ErrorClass::InvalidArgument,
        }
    }

    /// The HTTP status EC2 answers with (for the audit trail and a later Query front end).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::AuthFailure => 401,
            ErrorCode::UnauthorizedOperation => 403,
            ErrorCode::DryRunOperation => 412,
            ErrorCode::InternalError => 500,
            ErrorCode::Unavailable => 503,
            _ => 400,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed EC2 request: the code and EC2's message. Displays as `Code: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Ec2Error {
    pub code: ErrorCode,
    pub message: String,
}

/// Result of a domain operation.
pub type Ec2Result<T> = Result<T, Ec2Error>;

impl Ec2Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Ec2Error {
            code,
            message: message.into(),
        }
    }

    /// `MissingParameter`: `The request must contain the parameter X`.
    pub fn missing(param: &str) -> Self {
        Self::new(
            ErrorCode::MissingParameter,
            format!("The request must contain the parameter {param}"),
        )
    }

    /// `InvalidParameterValue` with EC2's usual wording.
    pub fn invalid_value(param: &str, value: impl fmt::Display, why: &str) -> Self {
        Self::new(
            ErrorCode::InvalidParameterValue,
            format!("Value ({value}) for parameter {param} is invalid. {why}"),
        )
    }

    /// `DryRunOperation`, the positive answer of a dry run.
    pub fn dry_run() -> Self {
        Self::new(
            ErrorCode::DryRunOperation,
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    pub fn image_not_found(ids: &[&str]) -> Self {
        Self::new(
            ErrorCode::InvalidAmiIdNotFound,
            format!("The image id '[{}]' does not exist", ids.join(", ")),
        )
    }

    pub fn snapshot_not_found(id: &str) -> Self {
        Self::new(
            ErrorCode::InvalidSnapshotNotFound,
            format!("The snapshot '{id}' does not exist."),
        )
    }

    pub fn volume_not_found(id: &str) -> Self {
        Self::new(
            ErrorCode::InvalidVolumeNotFound,
            format!("The volume '{id}' does not exist."),
        )
    }

    pub fn instance_not_found(ids: &[&str]) -> Self {
        Self::new(
            ErrorCode::InvalidInstanceIdNotFound,
            format!("The instance ID '{}' does not exist", ids.join(", ")),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_starts_with_the_code() {
        let e = Ec2Error::image_not_found(&["ami-12345678"]);
        assert_eq!(
            e.to_string(),
            "InvalidAMIID.NotFound: The image id '[ami-12345678]' does not exist"
        );
        assert_eq!(e.code.class(), ErrorClass::NotFound);
        assert_eq!(ErrorCode::DryRunOperation.http_status(), 412);
    }

    #[test]
    fn kms_codes_are_kmss_own() {
        assert_eq!(ErrorCode::KmsNotFound.as_str(), "NotFoundException");
        assert_eq!(ErrorCode::KmsNotFound.class(), ErrorClass::NotFound);
        assert_eq!(
            ErrorCode::KmsInvalidState.as_str(),
            "KMSInvalidStateException"
        );
        assert_eq!(
            ErrorCode::KmsDisabled.class(),
            ErrorClass::FailedPrecondition
        );
        assert_eq!(
            ErrorCode::KmsValidation.class(),
            ErrorClass::InvalidArgument
        );
        assert_eq!(
            ErrorCode::KmsAccessDenied.class(),
            ErrorClass::PermissionDenied
        );
        assert_eq!(
            ErrorCode::KmsAlreadyExists.class(),
            ErrorClass::AlreadyExists
        );
        assert_eq!(ErrorCode::KmsInvalidState.http_status(), 400);
    }
}
