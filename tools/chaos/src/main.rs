//! `chaos`: our own Jepsen-style run (`just chaos [SECONDS] [BACKEND]`).
//! The stack (Redis or a Redis Cluster, the services, two or three
//! gateways) and its clients each in a network namespace of their own on a
//! private bridge; random faults (kill -9, SIGTERM, SIGSTOP, partitions)
//! while senders send; then a checker over the whole send/receive history.
//!
//! Subcommands: `run` (the whole thing, as root), `check DIR` (judge a
//! run's history again), `cleanup` (namespaces of runs that died), and
//! what `run` starts inside namespaces: `client`, `register`, `probe`.

#![forbid(unsafe_code)]

mod check;
mod client;
mod conn;
mod faults;
mod netns;
mod run;
mod stack;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Jepsen-style chaos run of the clusterchat stack in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole run: network, stack, clients, faults, checker.
    Run(run::RunArgs),
    /// Judges a run's history again (its directory).
    Check { dir: PathBuf },
    /// Removes the namespaces (and processes) of runs that died.
    Cleanup,
    /// One client (started by `run` inside its namespace).
    Client(client::ClientArgs),
    /// Registers users through a gateway; prints their ids.
    Register {
        #[arg(long)]
        gateway: std::net::IpAddr,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        password: String,
    },
    /// Exits 0 when ADDR accepts a connection (and answers GET PATH with 200).
    Probe {
        addr: SocketAddr,
        #[arg(long)]
        http: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => run::run(args).await,
        Cmd::Check { dir } => check::check(&dir, None).map(|outcome| {
            println!("{}", outcome.summary);
            outcome.pass
        }),
        Cmd::Cleanup => {
            println!("removed {} namespaces", netns::remove_stale());
            Ok(true)
        }
        Cmd::Client(args) => client::run(args).await.map(|()| true),
        Cmd::Register {
            gateway,
            prefix,
            count,
            password,
        } => client::register(gateway, &prefix, count, &password)
            .await
            .map(|()| true),
        Cmd::Probe { addr, http } => client::probe(addr, http.as_deref()).await.map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
