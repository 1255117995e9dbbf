//! TLS for clients: real handshakes with a real nginx that terminates TLS in
//! front of the gateways (classic TCP and WebSocket), a certificate from a
//! CA made for the test (deploy/dev/tls-certs.sh), clients that chat across
//! nodes with plain-TCP clients, a client that trusts another CA and is
//! refused, and the `chat` CLI with `--tls`, `wss://` and a wrong `--ca`.
//! The shipped nginx configurations are checked with `nginx -t`.

use std::{net::SocketAddr, path::Path, sync::Arc};

use e2e::{Client, NginxTls, RECV_TIMEOUT, Stack, chat, run_chat};
use futures::{SinkExt as _, StreamExt as _};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, ReadHalf, WriteHalf},
    net::TcpStream,
    process::Command,
};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

/// A client configuration that trusts only the CA in `ca`.
fn trusting(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca.pem") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A CA of its own, unrelated to the stack's.
async fn other_ca(stack: &Stack) -> std::path::PathBuf {
    let dir = Path::new(&stack.logs()).join("other-ca");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/tls-certs.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(&dir)
        .status()
        .await
        .expect("tls-certs.sh");
    assert!(status.success());
    dir.join("ca.pem")
}

fn tls_of(stack: &Stack) -> &NginxTls {
    stack
        .nginx
        .as_ref()
        .and_then(|n| n.tls.as_ref())
        .expect("stack built with_tls")
}

async fn handshake(
    addr: SocketAddr,
    name: &'static str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name).expect("server name");
    tokio::time::timeout(RECV_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("the handshake ends in time")
}

/// A JSON-speaking client over one transport or another.
trait JsonClient {
    async fn send(&mut self, request: &Value);
    async fn recv(&mut self) -> Value;
}

/// A classic client over TLS: requests end with NUL, replies with a newline.
struct TlsClient {
    reader: BufReader<ReadHalf<TlsStream<TcpStream>>>,
    writer: WriteHalf<TlsStream<TcpStream>>,
}

impl TlsClient {
    async fn connect(addr: SocketAddr, name: &'static str, config: Arc<ClientConfig>) -> Self {
        let stream = handshake(addr, name, config)
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        let (read, writer) = tokio::io::split(stream);
        Self {
            reader: BufReader::new(read),
            writer,
        }
    }
}

impl JsonClient for TlsClient {
    async fn send(&mut self, request: &Value) {
        let mut bytes = request.to_string().into_bytes();
        bytes.push(0);
        self.writer.write_all(&bytes).await.expect("send");
        self.writer.flush().await.expect("flush");
    }

    async fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(RECV_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("a message from the server in time")
            .expect("read");
        assert!(n > 0, "the server closed the connection");
        serde_json::from_str(line.trim_end()).expect("json")
    }
}

/// A WebSocket client over TLS.
struct WssClient(WebSocketStream<TlsStream<TcpStream>>);

impl WssClient {
    async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Self {
        let stream = handshake(addr, "127.0.0.1", config)
            .await
            .unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
        let (socket, _) = tokio_tungstenite::client_async(format!("wss://{addr}/ws"), stream)
            .await
            .expect("WebSocket over TLS");
        Self(socket)
    }
}

impl JsonClient for WssClient {
    async fn send(&mut self, request: &Value) {
        self.0
            .send(Message::text(request.to_string()))
            .await
            .expect("ws send");
    }

    async fn recv(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(RECV_TIMEOUT, self.0.next())
                .await
                .expect("a ws message in time")
                .expect("ws open")
                .expect("ws message");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).expect("json");
            }
        }
    }
}

/// A plain-TCP client logged in on each node, with its user id. Whichever
/// node nginx chose for a TLS client, one of them is on another node.
async fn a_plain_client_on_each_node(stack: &Stack) -> Vec<(i64, Client)> {
    let mut clients = Vec::new();
    for (i, gateway) in stack.gateways.iter().enumerate() {
        let mut client = Client::connect(gateway.tcp).await;
        let id = client.register(&format!("plain{i}"), "pw").await;
        client.login_ok(id, "pw").await;
        clients.push((id, client));
    }
    clients
}

/// `alice` registers and logs in over her transport (`over`), then chats
/// both ways with a plain client on each node.
async fn chats_with_plain_clients_on_both_nodes(
    alice: &mut impl JsonClient,
    stack: &Stack,
    over: &str,
) {
    alice
        .send(&json!({"msgid": 4, "name": "alice", "password": "pa"}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["errno"], 0, "register over {over}: {ack}");
    let a = ack["id"].as_i64().expect("id");
    alice
        .send(&json!({"msgid": 1, "id": a, "password": "pa"}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["errno"], 0, "login over {over}: {ack}");

    let hello = format!("hello over {over}");
    for (b, mut bob) in a_plain_client_on_each_node(stack).await {
        alice.send(&chat(a, b, &hello)).await;
        let got = bob.recv().await;
        assert_eq!(got["msg"], hello.as_str(), "{got}");
        assert_eq!(got["id"], a);

        bob.send(&chat(b, a, "and back in plain")).await;
        let got = alice.recv().await;
        assert_eq!(got["msg"], "and back in plain", "{got}");
        assert_eq!(got["id"], b);
    }
}

#[tokio::test]
async fn classic_client_over_tls_chats_with_plain_clients_on_both_nodes() {
    let stack = Stack::builder().gateways(2).with_tls().start().await;
    let tls = tls_of(&stack);
    // "localhost": the certificate's DNS name (the wss test uses its IP).
    let mut alice = TlsClient::connect(tls.tcp, "localhost", trusting(&tls.ca)).await;
    chats_with_plain_clients_on_both_nodes(&mut alice, &stack, "tls").await;
}

#[tokio::test]
async fn websocket_client_over_wss_chats_with_plain_clients_on_both_nodes() {
    let stack = Stack::builder().gateways(2).with_tls().start().await;
    let tls = tls_of(&stack);
    let mut alice = WssClient::connect(tls.ws, trusting(&tls.ca)).await;
    chats_with_plain_clients_on_both_nodes(&mut alice, &stack, "wss").await;
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let stack = Stack::builder().gateways(1).with_tls().start().await;
    let tls = tls_of(&stack);
    let stranger = trusting(&other_ca(&stack).await);
    for addr in [tls.tcp, tls.ws] {
        let err = handshake(addr, "127.0.0.1", stranger.clone())
            .await
            .expect_err("a certificate from an unknown CA is refused");
        let cause = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        assert!(
            matches!(
                cause,
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{addr}: {err:?}"
        );
    }
    // A name the certificate does not carry is refused too.
    let err = handshake(tls.tcp, "example.org", trusting(&tls.ca))
        .await
        .expect_err("the certificate is not for example.org");
    assert!(
        matches!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_))
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn chat_cli_over_tls_and_wss_and_a_wrong_ca() {
    let stack = Stack::builder().gateways(2).with_tls().start().await;
    let tls = tls_of(&stack);
    let (tcp, ca) = (tls.tcp.to_string(), tls.ca.display().to_string());
    let wss = format!("wss://{}/ws", tls.ws);

    let (ok, out, err) = run_chat(&[
        "--tls",
        "--addr",
        &tcp,
        "--ca",
        &ca,
        "register",
        "--name",
        "alice",
        "--password",
        "pa",
    ])
    .await;
    assert!(ok, "register with --tls: {err}");
    let a = serde_json::from_str::<Value>(&out).expect("json")["id"]
        .as_i64()
        .expect("id");
    let (ok, out, err) = run_chat(&[
        "--ws",
        &wss,
        "--ca",
        &ca,
        "register",
        "--name",
        "bob",
        "--password",
        "pb",
    ])
    .await;
    assert!(ok, "register over wss: {err}");
    let b = serde_json::from_str::<Value>(&out).expect("json")["id"]
        .as_i64()
        .expect("id");

    let mut bob = Client::connect(stack.gateways[1].tcp).await;
    bob.login_ok(b, "pb").await;
    let (ok, out, err) = run_chat(&[
        "--tls",
        "--addr",
        &tcp,
        "--ca",
        &ca,
        "send",
        "--id",
        &a.to_string(),
        "--password",
        "pa",
        "--to",
        &b.to_string(),
        "--msg",
        "hi from the cli over tls",
    ])
    .await;
    assert!(ok, "send with --tls: {out} {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["errno"],
        0
    );
    let got = bob.recv().await;
    assert_eq!(got["msg"], "hi from the cli over tls", "{got}");

    // Another CA: refused with a message that says why, exit status non-zero.
    let stranger = other_ca(&stack).await.display().to_string();
    for endpoint in [vec!["--tls", "--addr", &tcp], vec!["--ws", &wss]] {
        let mut args = endpoint.clone();
        args.extend([
            "--ca",
            &stranger,
            "register",
            "--name",
            "eve",
            "--password",
            "pe",
        ]);
        let (ok, out, err) = run_chat(&args).await;
        assert!(!ok, "{endpoint:?} with the wrong CA must fail: {out}");
        assert!(
            err.contains("not trusted") && err.contains("--ca"),
            "{endpoint:?}: a clear message, not {err:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// The configurations `just up` and `just bench` run, filled in as
/// stack.sh fills them, pass `nginx -t`.
#[tokio::test]
async fn shipped_nginx_configurations_are_valid() {
    let dir = std::env::temp_dir()
        .join("clusterchat-e2e")
        .join(format!("nginx-t-{}", std::process::id()));
    let certs = dir.join("tls");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev/tls-certs.sh");
    assert!(
        Command::new("bash")
            .arg(script)
            .arg(&certs)
            .status()
            .await
            .expect("tls-certs.sh")
            .success()
    );
    for name in ["nginx.conf", "bench.conf"] {
        let template = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/nginx")
            .join(name);
        let conf = std::fs::read_to_string(&template)
            .expect("template")
            .replace("__STATE__", &dir.display().to_string())
            .replace("__LOGS__", &dir.display().to_string())
            .replace("__TLS__", &certs.display().to_string())
            // What deploy/dev/stack.sh fills in per profile (here: dev's).
            .replace(
                "__TCP_SERVERS__",
                "server 127.0.0.1:6000; server 127.0.0.1:6002;",
            )
            .replace(
                "__WS_SERVERS__",
                "server 127.0.0.1:6080; server 127.0.0.1:6082;",
            )
            .replace("__TCP_PORT__", "8000")
            .replace("__WS_PORT__", "8080")
            .replace("__TLS_TCP_PORT__", "8443")
            .replace("__TLS_WS_PORT__", "8444")
            .replace("__STATUS_PORT__", "8089");
        let path = dir.join(name);
        std::fs::write(&path, conf).expect("write");
        let out = Command::new("/usr/sbin/nginx")
            .arg("-t")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path)
            .output()
            .await
            .expect("nginx (installed by `just test`)");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
