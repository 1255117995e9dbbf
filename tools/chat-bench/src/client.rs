//! A minimal classic-protocol client for load: NUL-terminated requests out,
//! newline-terminated JSON in. On the measured path: chats (msgid 6, 10),
//! and for receivers that acknowledge, acks (msgid 12).

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, BufWriter},
    net::{
        TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
};

pub struct Client {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: BufWriter<OwnedWriteHalf>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Self {
            reader: BufReader::with_capacity(64 * 1024, read),
            writer: BufWriter::with_capacity(64 * 1024, write),
        })
    }

    /// Queues a request (call `flush` to send).
    pub async fn queue(&mut self, request: &Value) -> anyhow::Result<()> {
        self.writer
            .write_all(request.to_string().as_bytes())
            .await?;
        self.writer.write_all(&[0]).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, request: &Value) -> anyhow::Result<()> {
        self.queue(request).await?;
        self.flush().await
    }

    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            anyhow::bail!("connection closed");
        }
        Ok(serde_json::from_str(line.trim_end())?)
    }

    pub async fn register(&mut self, name: &str, password: &str) -> anyhow::Result<i64> {
        self.send(&json!({"msgid": 4, "name": name, "password": password}))
            .await?;
        let ack = self.recv().await?;
        ack["id"]
            .as_i64()
            .ok_or_else(|| anyhow::anyhow!("register {name} failed: {ack}"))
    }

    pub async fn login(&mut self, id: i64, password: &str) -> anyhow::Result<Value> {
        self.login_as(id, password, false).await
    }

    /// Logs in; with `acks`, as a client that acknowledges deliveries.
    pub async fn login_as(&mut self, id: i64, password: &str, acks: bool) -> anyhow::Result<Value> {
        self.send(&json!({"msgid": 1, "id": id, "password": password, "acks": acks}))
            .await?;
        let ack = self.recv().await?;
        if ack["errno"] != 0 {
            anyhow::bail!("login {id} failed: {ack}");
        }
        Ok(ack)
    }
}
