//! The client-facing protocol: framing of the byte stream and the classic
//! messages. Pure code, no I/O.

pub mod classic;
pub mod framing;
pub mod ws;
