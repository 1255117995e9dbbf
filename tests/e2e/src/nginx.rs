//! nginx in front of a stack's gateways (stream proxying with PROXY
//! headers, plain and optionally TLS), its config rendered from
//! `nginx.conf.template` and `nginx-tls.conf.template`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use tokio::process::{Child, Command};

use crate::{
    process::{addr, free_port, wait_for_port},
    stack::Gateway,
};

/// The whole config; `{{TLS_SERVERS}}` is [`TLS_TEMPLATE`] filled in, or nothing.
const CONF_TEMPLATE: &str = include_str!("nginx.conf.template");
/// The TLS listeners, inside `stream { }`.
const TLS_TEMPLATE: &str = include_str!("nginx-tls.conf.template");

/// `template` with each `(placeholder, value)` substituted; every
/// placeholder must be in the template, and none may be left over.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (placeholder, value) in values {
        assert!(
            out.contains(placeholder),
            "no {placeholder} in the template"
        );
        out = out.replace(placeholder, value);
    }
    assert!(!out.contains("{{"), "a placeholder left unfilled:\n{out}");
    out
}

/// The `server` lines of an upstream block.
fn upstream_servers(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("        server {a} max_fails=3 fail_timeout=30s;\n"))
        .collect()
}

/// nginx.conf: listening on `tcp` and `ws` (and the TLS listeners of
/// `tls`), in front of the gateways' TCP ports `tcp_upstreams` and HTTP
/// ports `ws_upstreams`; pid file and error log in `dir`.
fn render_conf(
    dir: &Path,
    (tcp, ws, status): (SocketAddr, SocketAddr, Option<SocketAddr>),
    tcp_upstreams: &[SocketAddr],
    ws_upstreams: &[SocketAddr],
    tls: Option<&NginxTls>,
) -> String {
    fill(
        CONF_TEMPLATE,
        &[
            ("{{DIR}}", &dir.display().to_string()),
            ("{{TCP_UPSTREAMS}}", &upstream_servers(tcp_upstreams)),
            ("{{WS_UPSTREAMS}}", &upstream_servers(ws_upstreams)),
            ("{{TCP}}", &tcp.to_string()),
            ("{{WS}}", &ws.to_string()),
            (
                "{{STATUS}}",
                &status
                    .map(|s| {
                        format!(
                            "http {{ access_log off; server {{ listen {s}; location = /stub_status {{ stub_status; }} }} }}\n"
                        )
                    })
                    .unwrap_or_default(),
            ),
            (
                "{{TLS_SERVERS}}",
                &tls.map(NginxTls::servers).unwrap_or_default(),
            ),
        ],
    )
}

pub struct Nginx {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// `GET /stub_status`: nginx's own counters (its HTTP connections), for
    /// a stack built `with_nginx_status`.
    pub status: Option<SocketAddr>,
    /// TLS listeners, for a stack built `with_tls`.
    pub tls: Option<NginxTls>,
    _child: Child,
}

impl Nginx {
    /// Starts nginx in front of `gateways` on free ports, its files under
    /// `stack_dir` (`nginx/`, and `tls/` when `with_tls`), and waits until
    /// it listens.
    pub(crate) async fn start(
        stack_dir: &Path,
        gateways: &[Gateway],
        with_tls: bool,
        with_status: bool,
    ) -> Self {
        let tcp = addr(free_port().await);
        let ws = addr(free_port().await);
        let status = if with_status {
            Some(addr(free_port().await))
        } else {
            None
        };
        let tls = if with_tls {
            Some(NginxTls::make(&stack_dir.join("tls")).await)
        } else {
            None
        };
        let dir = stack_dir.join("nginx");
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let conf = render_conf(
            &dir,
            (tcp, ws, status),
            &gateways.iter().map(|g| g.tcp).collect::<Vec<_>>(),
            &gateways.iter().map(|g| g.http).collect::<Vec<_>>(),
            tls.as_ref(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx (installed by `just test`)");
        wait_for_port(tcp.port(), "nginx").await;
        if let Some(tls) = &tls {
            wait_for_port(tls.tcp.port(), "nginx (TLS)").await;
        }
        Self {
            tcp,
            ws,
            status,
            tls,
            _child: child,
        }
    }
}

/// nginx's TLS listeners in front of the same upstreams as the plain ones
/// (deploy/nginx/nginx.conf's TLS settings), and the CA that signed their
/// certificate (SAN IP:127.0.0.1, DNS:localhost).
pub struct NginxTls {
    /// Classic TCP over TLS.
    pub tcp: SocketAddr,
    /// WebSocket over TLS: `wss://{ws}/ws`.
    pub ws: SocketAddr,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl NginxTls {
    async fn make(dir: &Path) -> Self {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/tls-certs.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir)
            .output()
            .await
            .expect("run tls-certs.sh");
        assert!(
            out.status.success(),
            "tls-certs.sh failed (openssl is installed by `just test`): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            tcp: addr(free_port().await),
            ws: addr(free_port().await),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    fn servers(&self) -> String {
        fill(
            TLS_TEMPLATE,
            &[
                ("{{CERT}}", &self.cert.display().to_string()),
                ("{{KEY}}", &self.key.display().to_string()),
                ("{{TCP}}", &self.tcp.to_string()),
                ("{{WS}}", &self.ws.to_string()),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_tls() -> NginxTls {
        let dir = Path::new("/tmp/clusterchat-e2e/stack-x/tls");
        NginxTls {
            tcp: addr(40003),
            ws: addr(40004),
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        }
    }

    fn fixed_conf(gateways: usize, tls: Option<&NginxTls>) -> String {
        let tcp = [addr(41001), addr(41011)];
        let ws = [addr(41002), addr(41012)];
        render_conf(
            Path::new("/tmp/clusterchat-e2e/stack-x/nginx"),
            (addr(40001), addr(40002), Some(addr(40005))),
            &tcp[..gateways],
            &ws[..gateways],
            tls,
        )
    }

    /// The lines the stack depends on: nginx's files in its directory,
    /// PROXY headers, every gateway in its upstream, the listeners (TLS
    /// ones only when asked for), and nothing left unfilled.
    #[test]
    fn renders_the_essential_lines() {
        let plain = fixed_conf(2, None);
        let tls = fixed_tls();
        let with_tls = fixed_conf(2, Some(&tls));
        for conf in [&plain, &with_tls] {
            for line in [
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;",
                "daemon off;",
                "pid /tmp/clusterchat-e2e/stack-x/nginx/nginx.pid;",
                "error_log /tmp/clusterchat-e2e/stack-x/nginx/error.log warn;",
                "    proxy_protocol on;",
                "    upstream chat_tcp {\n        server 127.0.0.1:41001 max_fails=3 fail_timeout=30s;\n        server 127.0.0.1:41011 max_fails=3 fail_timeout=30s;\n    }\n",
                "    upstream chat_ws {\n        server 127.0.0.1:41002 max_fails=3 fail_timeout=30s;\n        server 127.0.0.1:41012 max_fails=3 fail_timeout=30s;\n    }\n",
                "    server { listen 127.0.0.1:40001 so_keepalive=6s:2s:3; proxy_pass chat_tcp;",
                "    server { listen 127.0.0.1:40002 so_keepalive=6s:2s:3; proxy_pass chat_ws;",
                "server { listen 127.0.0.1:40005; location = /stub_status { stub_status; } }",
            ] {
                assert!(conf.contains(line), "no {line:?} in\n{conf}");
            }
            assert!(conf.starts_with("load_module "), "{conf}");
            assert!(conf.ends_with("} } }\n"), "{conf}");
            assert!(!conf.contains("{{"), "{conf}");
            assert_eq!(conf.matches('{').count(), conf.matches('}').count());
        }
        assert!(!plain.contains("ssl"), "{plain}");
        for line in [
            "    ssl_certificate /tmp/clusterchat-e2e/stack-x/tls/server.pem; ssl_certificate_key /tmp/clusterchat-e2e/stack-x/tls/server.key;",
            "    server { listen 127.0.0.1:40003 ssl so_keepalive=6s:2s:3; proxy_pass chat_tcp;",
            "    server { listen 127.0.0.1:40004 ssl so_keepalive=6s:2s:3; proxy_pass chat_ws;",
        ] {
            assert!(with_tls.contains(line), "no {line:?} in\n{with_tls}");
        }
    }
}
