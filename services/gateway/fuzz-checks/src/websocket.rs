//! Client bytes on an upgraded WebSocket, read as the gateway reads them.
//!
//! The server side is `tokio-tungstenite` in the server role over an
//! in-memory duplex stream, configured as axum's `WebSocketUpgrade` is in
//! `net/http.rs` (`websocket`): tungstenite's defaults with a maximum
//! message size of twice the request limit. Each message is then mapped by
//! the gateway's own `protocol::ws` (what its `WsSource` calls: a text longer
//! than the request limit is refused as too large, else it is a frame for
//! the classic parser) and text frames go through [`crate::classic::check`].
//!
//! Input layout: one byte picks the request limit from [`LIMITS`]; then,
//! until the input ends, one op byte:
//! - `0xxx_xxxx`: a frame: bits 0-3 opcode, bit 4 FIN, bit 5 RSV1, bit 6
//!   unmasked; then a little-endian `u16` payload length, a 4-byte mask key
//!   (when masked) and the payload (shorter if the input ends). The payload
//!   is stored unmasked, so seeds are readable;
//! - `1111_11xx`: a large masked data frame (text, or a continuation if bit 0
//!   is set; FIN unless bit 1 is set) of `4 × u16` bytes, all one byte (rare:
//!   large frames are slow, and a few reach every limit);
//! - any other `1xxx_xxxx`: raw bytes: a length byte, then that many bytes as
//!   they are.
//!
//! Properties: nothing panics and the read ends; no message is longer than
//! the WebSocket limit; when the input is frames only, a data message that
//! grows past the limit before the first close frame ends the read with an
//! error (oversize is an error, not a crash, and not accepted).

use arbitrary::Unstructured;
use futures::StreamExt;
use gateway::protocol::{
    framing::{Frame, FrameError},
    ws,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

/// Request limits (`max_frame_bytes`); 64 KiB is the default.
pub const LIMITS: [usize; 4] = [16, 256, 1024, 64 * 1024];

const OP_CONTINUATION: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_CLOSE: u8 = 8;
/// The op byte (low two bits clear) of a large frame in the input.
const LARGE_OP: u8 = 0xfc;

#[derive(Debug, Default)]
pub struct Case {
    pub max: usize,
    /// What the client sends.
    pub bytes: Vec<u8>,
    /// Whether `bytes` is made of whole frames only (no raw bytes).
    pub frames_only: bool,
    /// A data message grew past the WebSocket limit before any close frame.
    pub oversize_sent: bool,
}

/// A frame as the input describes it.
#[derive(Debug, Clone)]
pub struct SeedFrame<'a> {
    pub opcode: u8,
    pub fin: bool,
    pub rsv1: bool,
    pub masked: bool,
    pub payload: &'a [u8],
}

impl<'a> SeedFrame<'a> {
    pub fn text(payload: &'a [u8]) -> Self {
        Self::data(OP_TEXT, payload)
    }

    pub fn data(opcode: u8, payload: &'a [u8]) -> Self {
        Self {
            opcode,
            fin: true,
            rsv1: false,
            masked: true,
            payload,
        }
    }
}

/// The bytes of a case made of frames (for seeds): the inverse of [`decode`].
pub fn encode(limit_index: u8, frames: &[SeedFrame<'_>]) -> Vec<u8> {
    let mut out = vec![limit_index];
    for frame in frames {
        let mut op = frame.opcode & 0x0f;
        if frame.fin {
            op |= 0x10;
        }
        if frame.rsv1 {
            op |= 0x20;
        }
        if !frame.masked {
            op |= 0x40;
        }
        out.push(op);
        let len = u16::try_from(frame.payload.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        if frame.masked {
            out.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
        }
        out.extend_from_slice(&frame.payload[..usize::from(len)]);
    }
    out
}

/// A large frame op for [`encode`]d input: `4 × quarter_len` bytes of `fill`.
pub fn encode_large(continuation: bool, fin: bool, quarter_len: u16, fill: u8) -> Vec<u8> {
    let mut op = LARGE_OP;
    if continuation {
        op |= 1;
    }
    if !fin {
        op |= 2;
    }
    let mut out = vec![op];
    out.extend_from_slice(&quarter_len.to_le_bytes());
    out.push(fill);
    out
}

/// Raw bytes for [`encode`]d input.
pub fn encode_raw(bytes: &[u8]) -> Vec<u8> {
    let len = u8::try_from(bytes.len()).unwrap_or(u8::MAX);
    let mut out = vec![0x80, len];
    out.extend_from_slice(&bytes[..usize::from(len)]);
    out
}

pub fn decode(data: &[u8]) -> Case {
    let mut u = Unstructured::new(data);
    let max = LIMITS[usize::from(u.arbitrary::<u8>().unwrap_or(0)) % LIMITS.len()];
    let ws_limit = max.saturating_mul(2);
    let mut case = Case {
        max,
        frames_only: true,
        ..Case::default()
    };
    // The size of the data message being assembled, if one is.
    let mut message: Option<usize> = None;
    let mut closed = false;
    while !u.is_empty() {
        let op = u.arbitrary::<u8>().unwrap_or(0);
        let (opcode, fin, rsv1, key, payload): (u8, bool, bool, Option<[u8; 4]>, Vec<u8>) =
            if op & 0x80 == 0 {
                let len = usize::from(u16::from_le_bytes(two(&mut u)));
                let key = (op & 0x40 == 0).then(|| {
                    let mut key = [0; 4];
                    for k in &mut key {
                        *k = u.arbitrary().unwrap_or(0);
                    }
                    key
                });
                let payload = u.bytes(len.min(u.len())).unwrap_or(&[]).to_vec();
                (op & 0x0f, op & 0x10 != 0, op & 0x20 != 0, key, payload)
            } else if op & LARGE_OP != LARGE_OP {
                let len = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                let raw = u.bytes(len.min(u.len())).unwrap_or(&[]);
                case.bytes.extend_from_slice(raw);
                case.frames_only = false;
                continue;
            } else {
                let len = 4 * usize::from(u16::from_le_bytes(two(&mut u)));
                let fill = u.arbitrary::<u8>().unwrap_or(b'x');
                let opcode = if op & 1 == 0 {
                    OP_TEXT
                } else {
                    OP_CONTINUATION
                };
                (opcode, op & 2 == 0, false, Some([0; 4]), vec![fill; len])
            };
        write_frame(&mut case.bytes, opcode, fin, rsv1, key, &payload);

        if closed {
            continue;
        }
        match opcode {
            OP_CLOSE => closed = true,
            OP_TEXT | 2 | OP_CONTINUATION => {
                let so_far = match (opcode, message) {
                    (OP_CONTINUATION, Some(n)) => n + payload.len(),
                    (OP_CONTINUATION, None) => continue,
                    _ => payload.len(),
                };
                if so_far > ws_limit {
                    case.oversize_sent = true;
                }
                message = (!fin).then_some(so_far);
            }
            _ => {}
        }
    }
    case
}

fn two(u: &mut Unstructured<'_>) -> [u8; 2] {
    [u.arbitrary().unwrap_or(0), u.arbitrary().unwrap_or(0)]
}

/// One frame as RFC 6455 lays it out, masked with `key` if there is one.
fn write_frame(
    out: &mut Vec<u8>,
    opcode: u8,
    fin: bool,
    rsv1: bool,
    key: Option<[u8; 4]>,
    payload: &[u8],
) {
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | (opcode & 0x0f));
    let mask_bit = u8::from(key.is_some()) << 7;
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match key {
        // Large frames: sent as they are, without a loop per byte (which
        // the fuzzer's instrumentation makes slow).
        Some([0, 0, 0, 0]) => {
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(payload);
        }
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
        }
        None => out.extend_from_slice(payload),
    }
}

pub fn check(data: &[u8]) {
    check_case(&decode(data));
}

/// What the server side read.
#[derive(Debug, Default)]
pub struct Outcome {
    pub texts: usize,
    pub too_large: usize,
    pub error: Option<String>,
    pub closed: bool,
}

pub fn check_case(case: &Case) -> Outcome {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    let outcome = RUNTIME.with(|runtime| runtime.block_on(read_as_the_gateway(case)));
    if case.frames_only && case.oversize_sent {
        assert!(
            outcome.error.is_some(),
            "a message over the limit ended without an error: {outcome:?}"
        );
    }
    outcome
}

async fn read_as_the_gateway(case: &Case) -> Outcome {
    let ws_limit = case.max.saturating_mul(2);
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let send = async {
        // The server may stop reading (an error, a close): then this fails.
        let _ = to_server.write_all(&case.bytes).await;
        let _ = to_server.shutdown().await;
    };
    let drain = async {
        let mut replies = Vec::new();
        let _ = from_server.read_to_end(&mut replies).await;
    };
    let read = async {
        let config = WebSocketConfig::default().max_message_size(Some(ws_limit));
        let mut socket = WebSocketStream::from_raw_socket(server, Role::Server, Some(config)).await;
        let mut outcome = Outcome::default();
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Text(text)) => {
                    assert!(text.len() <= ws_limit, "a text of {} bytes", text.len());
                    outcome.texts += 1;
                    // What the gateway's `WsSource` makes of it.
                    match ws::text_frame(text.as_str(), case.max) {
                        Frame::Value(request) => crate::classic::check(&request),
                        Frame::Invalid(FrameError::TooLarge { max }) => {
                            assert!(text.len() > max);
                            outcome.too_large += 1;
                        }
                        other => panic!("a text message became {other:?}"),
                    }
                }
                Ok(Message::Binary(bytes)) => {
                    assert!(bytes.len() <= ws_limit, "a binary of {} bytes", bytes.len());
                    assert!(matches!(ws::binary_frame(), Frame::Invalid(_)));
                }
                Ok(Message::Close(_)) => outcome.closed = true,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(e) => {
                    outcome.error = Some(e.to_string());
                    break;
                }
            }
        }
        outcome
    };
    let ((), (), outcome) = tokio::join!(send, drain, read);
    outcome
}
