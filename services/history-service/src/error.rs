//! The history service's one error type and its one mapping to `tonic::Status`.

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("the history database is unavailable; try again later")]
    Unavailable(#[source] sqlx::Error),
    #[error("the user service is unavailable, so group membership is unknown; try again later")]
    MembershipUnknown(#[source] tonic::Status),
    #[error("search is turned off on this history service (CLUSTERCHAT_HISTORY_SEARCH=off)")]
    SearchOff,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for HistoryError {
    fn from(error: sqlx::Error) -> Self {
        if mysql_pool::is_unavailable(&error) {
            HistoryError::Unavailable(error)
        } else {
            HistoryError::Internal(error.into())
        }
    }
}

impl From<HistoryError> for tonic::Status {
    fn from(error: HistoryError) -> Self {
        use tonic::Status;
        match &error {
            HistoryError::InvalidArgument(m) => Status::invalid_argument(m),
            HistoryError::PermissionDenied(m) => Status::permission_denied(m),
            HistoryError::SearchOff => Status::failed_precondition(error.to_string()),
            HistoryError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Status::unavailable(error.to_string())
            }
            HistoryError::MembershipUnknown(cause) => {
                tracing::warn!(code = ?cause.code(), error = cause.message(), "user service unavailable");
                Status::unavailable(error.to_string())
            }
            HistoryError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal(error.to_string())
            }
        }
    }
}
