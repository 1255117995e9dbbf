//! Compiles `proto/` with protox (pure Rust), so no `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

/// Each contract, and the file its own descriptor set is written to: a
/// service's reflection describes that service alone, not its neighbours'.
const PROTOS: &[(&str, &str)] = &[
    ("clusterchat/user/v1/user.proto", "user.bin"),
    ("clusterchat/offline/v1/offline.proto", "offline.bin"),
    ("clusterchat/history/v1/history.proto", "history.bin"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    for (proto, bin) in PROTOS {
        let fds = protox::compile([proto], [&root])?;
        std::fs::write(out_dir.join(bin), fds.encode_to_vec())?;
    }

    let fds = protox::compile(PROTOS.iter().map(|(proto, _)| proto), [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    for (proto, _) in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    Ok(())
}
