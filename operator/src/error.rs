//! The operator's error type: one variant per failed action, named after it.

/// Why a reconcile failed. Every variant is transient from the controller's point of view and
/// is retried with backoff; an invalid spec is not an error but a status (see `plan`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {kind} {name}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to apply {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to write the status of {name}")]
    WriteStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to serialize an object")]
    Serialize(#[source] serde_json::Error),
    #[error("the resource has no namespace")]
    MissingNamespace,
    #[error("TLS Secret {name} cannot be used: {problem} (it needs tls.crt, tls.key and ca.crt)")]
    TlsSecret { name: String, problem: String },
    #[error("membership step {step} for {member} failed: {source}")]
    Membership {
        member: String,
        step: String,
        #[source]
        source: crate::members::ChangeError,
    },
    #[error("failed to delete pod {name}")]
    DeletePod {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete PersistentVolumeClaim {name}")]
    DeleteVolume {
        name: String,
        #[source]
        source: kube::Error,
    },
    /// A platform other than the API server (the end-to-end suite's local processes) failed.
    #[error("{action} failed: {message}")]
    Platform { action: &'static str, message: String },
}

impl Error {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::WriteStatus { .. } => "write_status",
            Error::Serialize(_) => "serialize",
            Error::MissingNamespace => "missing_namespace",
            Error::TlsSecret { .. } => "tls_secret",
            Error::Membership { .. } => "membership",
            Error::DeleteVolume { .. } => "delete_volume",
            Error::DeletePod { .. } => "delete_pod",
            Error::Platform { .. } => "platform",
        }
    }
}
