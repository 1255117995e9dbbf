//! The client-facing protocol: framing of the byte stream, the classic
//! messages, the kinds of client and what each gets, conversations, and
//! WebSocket close codes. Pure code, no I/O.

pub mod classic;
pub mod client;
pub mod conversation;
pub mod framing;
pub mod ws;
