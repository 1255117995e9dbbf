//! The client-facing protocol: framing of the byte stream, the classic
//! messages and conversations. Pure code, no I/O.

pub mod classic;
pub mod conversation;
pub mod framing;
pub mod ws;
