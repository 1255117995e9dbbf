//! The user service's one error type and its one mapping to `tonic::Status`.

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("id or password is invalid")]
    BadCredentials,
    /// A session token that is unknown, ended or expired.
    #[error("the session has ended or expired; log in with your password")]
    SessionEnded,
    /// A bound was reached (a full group, too many groups); says which.
    #[error("{0}")]
    LimitReached(String),
    /// Too many password hashes are already waiting; nothing was done.
    #[error("busy: too many logins at once, retry shortly")]
    Busy,
    #[error("the user database is unavailable; try again later")]
    Unavailable(#[source] sqlx::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<sqlx::Error> for UserError {
    fn from(error: sqlx::Error) -> Self {
        if mysql_pool::is_unavailable(&error) {
            UserError::Unavailable(error)
        } else {
            UserError::Internal(error.into())
        }
    }
}

impl From<UserError> for tonic::Status {
    fn from(error: UserError) -> Self {
        use tonic::Status;
        match &error {
            UserError::InvalidArgument(m) => Status::invalid_argument(m),
            UserError::NotFound(m) => Status::not_found(m),
            UserError::AlreadyExists(m) => Status::already_exists(m),
            UserError::FailedPrecondition(m) => Status::failed_precondition(m),
            UserError::BadCredentials | UserError::SessionEnded => {
                Status::unauthenticated(error.to_string())
            }
            UserError::LimitReached(m) => Status::resource_exhausted(m),
            UserError::Busy => Status::resource_exhausted(error.to_string()),
            UserError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Status::unavailable(error.to_string())
            }
            UserError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Status::internal(error.to_string())
            }
        }
    }
}
