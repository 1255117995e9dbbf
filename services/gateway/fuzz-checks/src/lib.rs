//! What the gateway's codec must never do, checked on one input.
//!
//! One function per fuzz target, each taking the raw bytes libFuzzer (or a
//! corpus file) gives it, decoding them into a structured case and panicking
//! when a property the design promises does not hold:
//! - [`framing::check`]: [`gateway::protocol::framing::JsonSplitter`] fed a
//!   stream in arbitrary chunks;
//! - [`classic::check`]: [`gateway::protocol::classic::parse`] on one frame,
//!   and the replies and delivered chats built from what it parsed;
//! - [`websocket::check`]: client bytes on an upgraded WebSocket (server role,
//!   the gateway's message limit), each text message then parsed.
//!
//! The cargo-fuzz targets in `fuzz/` (nightly) and the replay test
//! `tests/fuzz_corpus.rs` (stable, part of `just test`) both call these, so
//! a property is written once. [`seeds`] are the frames the tests use, as
//! corpus files.
//!
//! **Architecture Invariant:** only the gateway's public API is used; the
//! checks know nothing of sessions, Redis or the network.

pub mod classic;
pub mod framing;
pub mod seeds;
pub mod websocket;

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: [&str; 3] = ["framing", "classic", "websocket"];

/// Runs the check of `target` (one of [`TARGETS`]) on `data`.
pub fn check(target: &str, data: &[u8]) {
    match target {
        "framing" => framing::check(data),
        "classic" => classic::check(data),
        "websocket" => websocket::check(data),
        other => panic!("no fuzz target named {other}"),
    }
}
