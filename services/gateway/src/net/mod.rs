//! The ways in: classic TCP (`tcp`: JSON values in a byte stream, replies
//! each followed by `\n`), HTTP (`http`: WebSocket at `/ws`, one JSON
//! message per text frame, the web client's files at `/`, and the admin
//! port's `/healthz` and `/metrics`), the PROXY protocol header
//! (`proxy_header`) and the web client's files (`web`).
//!
//! Every connection holds a permit of the node's connection limit from
//! accept for as long as it lives; a client over the limit is told so and
//! closed. From a trusted proxy, a PROXY protocol header names the client.
//! TCP sockets get keepalive probes, so a peer that vanished without
//! closing is noticed.

pub mod http;
pub mod proxy_header;
pub mod tcp;
pub mod web;

pub use self::{
    http::{admin_router, serve_http},
    tcp::serve_tcp,
};

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::{net::proxy_header::Outcome, node::Node, protocol::classic::Failure};

/// What [`accept`] got.
pub(crate) enum Accepted {
    /// A connection within the node's limit, set up (no delay, keepalive).
    Admitted(TcpStream, SocketAddr, OwnedSemaphorePermit),
    /// One over the limit: tell it so and close it.
    Full(TcpStream),
}

/// The next connection on `listener`, with a permit of the node's
/// connection limit if one is free; `None` once shutdown is requested.
pub(crate) async fn accept(
    node: &Node,
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
) -> Option<Accepted> {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = node.shutdown.requested() => return None,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            return Some(Accepted::Full(stream));
        };
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream, node.config.tcp_keepalive);
        return Some(Accepted::Admitted(stream, peer, permit));
    }
}

pub(crate) fn node_full(node: &Node) -> String {
    let max = node.config.limits.max_connections;
    format!("this node is full ({max} connections); try again later")
}

/// Why a connection ends before its first request.
pub(crate) enum Refusal {
    /// Closed or failed.
    Gone,
    /// Sent nothing within the wait.
    Silent,
    /// A PROXY header that does not parse: say why.
    Invalid(Failure),
}

/// The client behind `peer`: `peer` itself, or from a trusted proxy the
/// client its PROXY header names (waiting at most `wait` for its first bytes).
pub(crate) async fn client_address(
    node: &Node,
    stream: &mut TcpStream,
    peer: SocketAddr,
    wait: Duration,
) -> Result<SocketAddr, Refusal> {
    if !node.config.trusted_proxies.contains(peer.ip()) {
        return Ok(peer);
    }
    let rest_within = node.config.handshake_timeout;
    match tokio::time::timeout(wait, proxy_header::read_header(stream, rest_within)).await {
        Ok(Ok(Ok(Outcome::Header(client)))) => Ok(client.unwrap_or(peer)),
        Ok(Ok(Ok(Outcome::None))) => Ok(peer),
        Ok(Ok(Ok(Outcome::Closed))) | Ok(Err(_)) => Err(Refusal::Gone),
        Ok(Ok(Err(invalid))) => {
            tracing::warn!(%peer, error = %invalid, "refused a connection");
            Err(Refusal::Invalid(Failure::bad_request(invalid.to_string())))
        }
        Err(_) => Err(Refusal::Silent),
    }
}

/// Keepalive probes after `idle`, then 3 probes `idle / 3` apart: a peer
/// gone without closing is noticed after about twice `idle`. Keepalive
/// probes only an idle connection; one with data the peer never
/// acknowledges would be retransmitted for about 15 minutes
/// (`tcp_retries2`), so `TCP_USER_TIMEOUT` gives up on it after the same
/// twice `idle`. Linux counts a zero window as well: a client that stops
/// reading while it is sent more than its buffers hold is disconnected after
/// twice `idle` (what it was not sent waits in its inbox for its next login).
fn set_keepalive(stream: &TcpStream, idle: std::time::Duration) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(idle / 3)
        .with_retries(3);
    let socket = socket2::SockRef::from(stream);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set tcp keepalive");
    }
    if let Err(e) = socket.set_tcp_user_timeout(Some(idle * 2)) {
        tracing::debug!(error = %e, "cannot set tcp user timeout");
    }
}
