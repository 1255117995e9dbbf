//! The offline service's one error type and its one mapping to `tonic::Status`.

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("the message is {size} bytes; at most {max} bytes are accepted")]
    TooLarge { size: usize, max: usize },
    #[error(
        "user {receiver} already has {max} pending offline messages; nothing more is accepted until they read some"
    )]
    BacklogFull { receiver: i64, max: u32 },
    #[error("the offline database is unavailable; try again later")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for OfflineError {
    fn from(error: sqlx::Error) -> Self {
        if mysql_pool::is_unavailable(&error) {
            OfflineError::Unavailable(error)
        } else {
            OfflineError::Internal(error.into())
        }
    }
}

impl From<OfflineError> for tonic::Status {
    fn from(error: OfflineError) -> Self {
        use tonic::Status;
        match &error {
            OfflineError::InvalidArgument(m) => Status::invalid_argument(m),
            OfflineError::TooLarge { .. } | OfflineError::BacklogFull { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            OfflineError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Status::unavailable(error.to_string())
            }
            OfflineError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal(error.to_string())
            }
        }
    }
}
