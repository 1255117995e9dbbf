//! How many bytes of what we sent the peer's TCP has acknowledged.
//!
//! A write that returned only put bytes into the kernel's send buffer: the
//! peer may be gone (its network vanished, it closed and answers with RST)
//! and never get them. The gateway counts a frame for a classic client as
//! delivered only once the peer's TCP acknowledged its last byte, which
//! Linux tells through `TCP_INFO` (`tcpi_bytes_acked`, since 4.1): the
//! payload bytes acknowledged on this connection, counted from its start.
//!
//! Through a proxy (nginx) the acknowledgement is the proxy's, not the
//! client's: what the proxy holds when the client vanishes is not known here.

use std::{io, os::fd::AsRawFd};

/// Payload bytes the peer acknowledged on this TCP connection, from its
/// start. Works on a socket that already failed (reset, timed out) as long
/// as it is open. `Unsupported` off Linux.
pub fn bytes_acked(socket: &impl AsRawFd) -> io::Result<u64> {
    imp::bytes_acked(socket.as_raw_fd())
}

#[cfg(target_os = "linux")]
mod imp {
    use std::{io, mem, os::fd::RawFd};

    #[allow(unsafe_code)]
    pub fn bytes_acked(fd: RawFd) -> io::Result<u64> {
        // SAFETY: `tcp_info` is plain data (all-zero is a valid value);
        // getsockopt writes at most `len` bytes into it and sets `len` to
        // what it wrote; `fd` is a descriptor the caller holds open.
        let (info, len) = unsafe {
            let mut info: libc::tcp_info = mem::zeroed();
            let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast::<libc::c_void>(),
                &mut len,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            (info, len as usize)
        };
        // A kernel older than the field returns a shorter struct.
        let end = mem::offset_of!(libc::tcp_info, tcpi_bytes_acked) + mem::size_of::<u64>();
        if len < end {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's TCP_INFO has no tcpi_bytes_acked",
            ));
        }
        Ok(info.tcpi_bytes_acked)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::{io, os::fd::RawFd};

    pub fn bytes_acked(_fd: RawFd) -> io::Result<u64> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO's bytes_acked is Linux only",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    use super::bytes_acked;

    #[tokio::test]
    async fn counts_what_the_peer_acknowledged() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        assert_eq!(bytes_acked(&server).expect("tcp_info"), 0);
        server.write_all(&[7u8; 1000]).await.expect("write");
        let mut buf = [0u8; 1000];
        client.read_exact(&mut buf).await.expect("read");
        // The acknowledgement may trail the read by a moment.
        let mut acked = 0;
        for _ in 0..100 {
            acked = bytes_acked(&server).expect("tcp_info");
            if acked == 1000 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(acked, 1000, "every byte written was acknowledged");
    }

    #[tokio::test]
    async fn a_closed_peer_acknowledges_nothing_more() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The closed peer answers data with RST; a second write may fail.
        let _ = server.write_all(b"lost\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = server.write_all(b"lost\n").await;
        assert_eq!(
            bytes_acked(&server).expect("tcp_info still answers"),
            0,
            "nothing written after the peer closed was acknowledged"
        );
    }
}
