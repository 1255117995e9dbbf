//! The web client's files, served on the public HTTP port next to `/ws`.
//!
//! The single-page client is built from `web/` into `web/dist` (`npm run
//! build`; `just up` and `just test` do it) and read from
//! `CLUSTERCHAT_GATEWAY_WEB_DIR` once, at start: the files live in memory,
//! so a request never touches the disk and no path from a request is ever
//! joined to a directory. Without that setting (or when the directory has
//! no `index.html`), `/` says how to build it.

use std::{collections::HashMap, path::Path, sync::Arc};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};

/// At most this many bytes of files are loaded (the client is ~100 KB).
const MAX_TOTAL_BYTES: u64 = 16 * 1024 * 1024;

/// What the client may load: only from this origin (the WebSocket too),
/// nothing inline, nothing framed.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

#[derive(Debug, Default)]
pub struct WebFiles {
    files: HashMap<String, (&'static str, axum::body::Bytes)>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot load the web client from {dir}: {reason}")]
pub struct WebFilesError {
    dir: String,
    reason: String,
}

impl WebFiles {
    /// Loads every regular file under `dir` (not following links out of it).
    pub fn load(dir: &Path) -> Result<Arc<Self>, WebFilesError> {
        let fail = |reason: String| WebFilesError {
            dir: dir.display().to_string(),
            reason,
        };
        let mut files = HashMap::new();
        let mut total = 0u64;
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            let entries = std::fs::read_dir(&current).map_err(|e| fail(e.to_string()))?;
            for entry in entries {
                let entry = entry.map_err(|e| fail(e.to_string()))?;
                let kind = entry.file_type().map_err(|e| fail(e.to_string()))?;
                let path = entry.path();
                if kind.is_dir() {
                    pending.push(path);
                    continue;
                }
                if !kind.is_file() {
                    continue;
                }
                let Ok(relative) = path.strip_prefix(dir) else {
                    continue;
                };
                let name = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
                total += bytes.len() as u64;
                if total > MAX_TOTAL_BYTES {
                    return Err(fail(format!("more than {MAX_TOTAL_BYTES} bytes")));
                }
                files.insert(format!("/{name}"), (content_type(&name), bytes.into()));
            }
        }
        if !files.contains_key("/index.html") {
            return Err(fail(
                "no index.html (build it: cd web && npm ci && npm run build)".into(),
            ));
        }
        Ok(Arc::new(Self { files }))
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The response for a GET of `uri`'s path.
    pub fn respond(&self, uri: &Uri) -> Response {
        let path = match uri.path() {
            "/" => "/index.html",
            other => other,
        };
        match self.files.get(path) {
            Some((content_type, bytes)) => {
                let mut response = Response::new(Body::from(bytes.clone()));
                let headers = response.headers_mut();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                // Small and rebuilt in place: always revalidate.
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                headers.insert(
                    header::CONTENT_SECURITY_POLICY,
                    HeaderValue::from_static(CSP),
                );
                headers.insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                );
                headers.insert(
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                );
                response
            }
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        }
    }
}

/// `/` when no web client was loaded.
pub fn not_built() -> Response {
    (
        StatusCode::NOT_FOUND,
        "The web client is not served by this node: build it (cd web && npm ci && npm run build) \
         and set CLUSTERCHAT_GATEWAY_WEB_DIR=web/dist (just up does both).\n",
    )
        .into_response()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json" | "map") => "application/json",
        Some("webmanifest") => "application/manifest+json",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_what_it_loaded_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("web-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("img")).expect("dir");
        std::fs::write(dir.join("index.html"), "<!doctype html>").expect("write");
        std::fs::write(dir.join("app.js"), "1").expect("write");
        std::fs::write(dir.join("img/x.svg"), "<svg/>").expect("write");
        let files = WebFiles::load(&dir).expect("load");
        assert_eq!(files.len(), 3);
        let get = |path: &str| files.respond(&path.parse::<Uri>().expect("uri"));
        let index = get("/");
        assert_eq!(index.status(), StatusCode::OK);
        assert_eq!(
            index.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(
            index
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
        assert_eq!(
            get("/app.js").headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(get("/img/x.svg").status(), StatusCode::OK);
        for missing in ["/nope", "/../Cargo.toml", "/img/../../etc/passwd", "/img"] {
            assert_eq!(get(missing).status(), StatusCode::NOT_FOUND, "{missing}");
        }
        std::fs::remove_file(dir.join("index.html")).expect("rm");
        assert!(WebFiles::load(&dir).is_err(), "no index.html");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
