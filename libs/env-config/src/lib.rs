//! Typed settings from environment variables.
//!
//! Every service reads its configuration the same way: a typed struct whose
//! fields come from `CLUSTERCHAT_*` variables, each with a default that works
//! for `just up`. A value that is present but does not parse is an error that
//! names the variable, never a silent fallback to the default.

use std::{fmt::Display, str::FromStr, time::Duration};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("environment variable {name} is not valid unicode")]
    NotUnicode { name: String },
    #[error("environment variable {name} must be set: {hint}")]
    Missing { name: String, hint: &'static str },
}

/// Reads `name` and parses it, or returns `default` when it is unset or empty.
pub fn var_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Ok(value) if value.trim().is_empty() => Ok(default),
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode {
            name: name.to_owned(),
        }),
    }
}

/// Reads a duration given in milliseconds.
pub fn millis_or(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    let millis = var_or(name, u64::try_from(default.as_millis()).unwrap_or(u64::MAX))?;
    Ok(Duration::from_millis(millis))
}

/// Reads an optional value: unset means `default`, an empty string or `off`
/// means `None`.
pub fn optional_or<T>(name: &str, default: Option<T>) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode {
            name: name.to_owned(),
        }),
        Ok(value) if value.trim().is_empty() || value.trim().eq_ignore_ascii_case("off") => {
            Ok(None)
        }
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
    }
}

/// A string that must not appear in logs or `Debug` output (passwords, URLs
/// with credentials).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The variable holding the shared secret that the gateway presents to the
/// internal gRPC services and that they require (`authorization: Bearer ...`).
pub const INTERNAL_TOKEN_VAR: &str = "CLUSTERCHAT_INTERNAL_TOKEN";

/// The fewest characters an internal token may have: `deploy/dev/stack.sh`
/// generates 64 hex digits; anything this short is a placeholder, not a secret.
pub const MIN_INTERNAL_TOKEN_CHARS: usize = 16;

/// Reads [`INTERNAL_TOKEN_VAR`]. It has no default: a service that starts
/// without it would either be open to anyone or refuse everyone, and both
/// should be found at start-up, not by the first caller.
pub fn internal_token() -> Result<Secret, ConfigError> {
    let name = INTERNAL_TOKEN_VAR;
    let value = match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        Ok(_) | Err(std::env::VarError::NotPresent) => {
            return Err(ConfigError::Missing {
                name: name.to_owned(),
                hint: "the shared secret of the gateway and the internal services \
                       (`just up` writes one to .stack/dev/internal-token; \
                       e.g. `openssl rand -hex 32`)",
            });
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ConfigError::NotUnicode {
                name: name.to_owned(),
            });
        }
    };
    let invalid = |reason: String| ConfigError::Invalid {
        name: name.to_owned(),
        value: "(not shown)".to_owned(),
        reason,
    };
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "it must be visible ASCII without spaces (it is sent as a header value)".into(),
        ));
    }
    if value.len() < MIN_INTERNAL_TOKEN_CHARS {
        return Err(invalid(format!(
            "it has {} characters; at least {MIN_INTERNAL_TOKEN_CHARS} are needed",
            value.len()
        )));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_not_printed() {
        let secret = Secret::new("mysql://u:hunter2@h/db");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn unset_variable_gives_default() {
        let got: u32 = var_or("CLUSTERCHAT_SURELY_UNSET_VARIABLE", 7).expect("default");
        assert_eq!(got, 7);
    }
}
