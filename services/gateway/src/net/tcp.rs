//! Classic TCP: JSON values in a byte stream, replies each followed by
//! `\n`. A request that has started must be whole within the frame
//! deadline, and all TCP connections together hold at most the partial
//! budget in unfinished requests. Classic clients parse each `read()` as one
//! JSON value, so until a connection uses the additions every frame is its
//! own write.

use std::{collections::VecDeque, io, sync::Arc};

use tokio::{
    io::AsyncWriteExt as _,
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::Semaphore,
    time::Instant,
};

use crate::{
    delivery::writer::FrameSink,
    metrics::{label, metrics},
    node::Node,
    protocol::{
        classic::{self, Failure, errno},
        framing::{Frame, JsonSplitter},
    },
    session::{self, FrameSource, Transport},
};

use super::{Accepted, Refusal, accept, client_address, node_full};

struct TcpSource {
    node: Arc<Node>,
    read: OwnedReadHalf,
    splitter: JsonSplitter,
    ready: VecDeque<Frame>,
    /// Charged to the node's partial budget for the splitter's buffer.
    charged: usize,
    /// When the unfinished request began to arrive.
    partial_since: Option<Instant>,
    /// Why the source ended, when the client should be told.
    ended: Option<Failure>,
}

impl TcpSource {
    fn new(node: Arc<Node>, read: OwnedReadHalf) -> Self {
        let max = node.config.limits.max_frame_bytes;
        Self {
            node,
            read,
            splitter: JsonSplitter::new(max),
            ready: VecDeque::new(),
            charged: 0,
            partial_since: None,
            ended: None,
        }
    }

    fn end(&mut self, failure: Failure) -> Option<Frame> {
        self.ended = Some(failure);
        None
    }
}

impl Drop for TcpSource {
    fn drop(&mut self) {
        self.node.admission.partial.recharge(&mut self.charged, 0);
    }
}

impl FrameSource for TcpSource {
    fn try_next_frame(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.ready.pop_front() {
                return Some(frame);
            }
            // Wait for readiness first and read into a buffer that lives
            // only for the read: an idle connection holds no read buffer.
            if self.splitter.has_partial() {
                let deadline = self.node.config.frame_deadline;
                let since = *self.partial_since.get_or_insert_with(Instant::now);
                match tokio::time::timeout_at(since + deadline, self.read.readable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        metrics()
                            .refused
                            .get_or_create(&label("why", "frame_deadline"))
                            .inc();
                        return self.end(Failure::bad_request(format!(
                            "a request was still unfinished {} ms after it began; closing",
                            deadline.as_millis()
                        )));
                    }
                }
            } else {
                self.partial_since = None;
                if self.read.readable().await.is_err() {
                    return None;
                }
            }
            let mut buf = [0u8; 8192];
            match self.read.try_read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let mut frames = Vec::new();
                    self.splitter.push(&buf[..n], &mut frames);
                    if !frames.is_empty() {
                        // A request ended: the deadline is the next one's,
                        // counted from now (it began within this read).
                        self.partial_since = None;
                    }
                    self.ready.extend(frames);
                    let held = self.splitter.buffered();
                    if !self
                        .node
                        .admission
                        .partial
                        .recharge(&mut self.charged, held)
                    {
                        metrics()
                            .refused
                            .get_or_create(&label("why", "partial_budget"))
                            .inc();
                        let max = self.node.config.limits.partial_budget_bytes;
                        return self.end(Failure::new(
                            errno::OVERLOADED,
                            format!(
                                "this node holds its limit of unfinished requests ({max} bytes); closing, try again later"
                            ),
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
    }

    fn ended_because(&mut self) -> Option<Failure> {
        self.ended.take()
    }
}

/// For a client that parses a stream (it used the additions), frames are
/// gathered in a buffer that exists only while there is something to write:
/// written and released at every flush (the writer flushes whenever its
/// queues are empty), so an idle connection holds no write buffer. For a
/// classic client, each frame is one write.
struct TcpSink {
    write: OwnedWriteHalf,
    pending: Vec<u8>,
    batching: bool,
    /// Bytes written to the socket so far.
    written: u64,
}

/// Past this, frames are written without waiting for the flush.
const WRITE_BATCH: usize = 64 * 1024;

impl FrameSink for TcpSink {
    async fn send(&mut self, mut frame: Vec<u8>) -> io::Result<()> {
        if !self.batching {
            frame.push(b'\n');
            self.write.write_all(&frame).await?;
            self.written += frame.len() as u64;
            return Ok(());
        }
        self.pending.extend_from_slice(&frame);
        self.pending.push(b'\n');
        if self.pending.len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    fn allow_batching(&mut self) {
        self.batching = true;
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.write.write_all(&self.pending).await?;
            self.written += self.pending.len() as u64;
            self.pending = Vec::new();
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn acknowledged(&self) -> Option<u64> {
        // Nothing here is written before the session's first frame (a
        // refusal closes the socket), so the kernel's count and ours start
        // together.
        match tcp_acked::bytes_acked(self.write.as_ref()) {
            Ok(acked) => Some(acked),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read TCP_INFO; counting writes as delivered");
                None
            }
        }
    }
}

/// Accepts classic TCP clients until shutdown.
pub async fn serve_tcp(node: Arc<Node>, listener: TcpListener, permits: Arc<Semaphore>) {
    while let Some(accepted) = accept(&node, &listener, &permits).await {
        let (mut stream, peer, permit) = match accepted {
            Accepted::Admitted(stream, peer, permit) => (stream, peer, permit),
            Accepted::Full(stream) => {
                let failure = Failure::new(errno::OVERLOADED, node_full(&node));
                tokio::spawn(refuse_tcp(stream, failure));
                continue;
            }
        };
        let node2 = node.clone();
        node.tasks.spawn(async move {
            // Before login anyway: the first bytes may wait as long as a login may.
            let wait = node2.config.login_deadline;
            let client = match client_address(&node2, &mut stream, peer, wait).await {
                Ok(client) => client,
                Err(refusal) => {
                    let failure = match refusal {
                        Refusal::Gone => return,
                        Refusal::Silent => {
                            metrics()
                                .refused
                                .get_or_create(&label("why", "login_deadline"))
                                .inc();
                            Failure::new(
                                errno::NOT_LOGGED_IN,
                                format!("no login within {} s; closing", wait.as_secs_f64()),
                            )
                        }
                        Refusal::Invalid(failure) => failure,
                    };
                    return refuse_tcp(stream, failure).await;
                }
            };
            let (read, write) = stream.into_split();
            let source = TcpSource::new(node2.clone(), read);
            let sink = TcpSink {
                write,
                pending: Vec::new(),
                batching: false,
                written: 0,
            };
            tracing::debug!(%client, %peer, "tcp connection");
            let open = metrics()
                .connections
                .get_or_create(&label("transport", "tcp"))
                .clone();
            open.inc();
            session::run(node2, source, sink, Transport::Tcp, client).await;
            open.dec();
            drop(permit);
        });
    }
}

/// Tells a classic client why it is refused, and closes.
async fn refuse_tcp(mut stream: TcpStream, failure: Failure) {
    let mut frame = classic::reply_error(&failure, None);
    frame.push(b'\n');
    let _ = stream.write_all(&frame).await;
    let _ = stream.shutdown().await;
}
