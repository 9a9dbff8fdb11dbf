//! The PROXY protocol (versions 1 and 2), sent by an L4 balancer before
//! anything else on a connection: it names the client the balancer
//! accepted, which becomes the connection's peer address for everything
//! after it (forwarding headers, rate limits, logs).
//!
//! With `listen.proxy_protocol` on, a connection that does not start with
//! a valid header within `http.header_timeout` is closed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use async_trait::async_trait;
use pingora_core::listeners::PreTlsProcess;
use pingora_core::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, UniqueID};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::SharedSnapshot;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 line, CRLF included.
const V1_MAX: usize = 107;

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PROXY protocol: {what}"),
    )
}

/// Reads one PROXY header from `s`, and nothing after it. `Ok(None)` for a
/// header that names no client (`UNKNOWN`, `LOCAL`): keep the peer.
pub async fn read_header<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
) -> io::Result<Option<SocketAddr>> {
    let mut start = [0u8; 12];
    s.read_exact(&mut start[..5]).await?;
    if &start[..5] == b"PROXY" {
        let mut line = start[..5].to_vec();
        loop {
            let b = s.read_u8().await?;
            line.push(b);
            if line.ends_with(b"\r\n") {
                break;
            }
            if line.len() >= V1_MAX {
                return Err(bad("version 1 line too long"));
            }
        }
        return parse_v1(&line[..line.len() - 2]);
    }
    s.read_exact(&mut start[5..]).await?;
    if start != V2_SIGNATURE {
        return Err(bad("the connection does not start with a PROXY header"));
    }
    let mut fixed = [0u8; 4];
    s.read_exact(&mut fixed).await?;
    let [ver_cmd, family, hi, lo] = fixed;
    if ver_cmd >> 4 != 2 {
        return Err(bad("unknown version"));
    }
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await?;
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: the balancer's own health check
        1 => {}
        _ => return Err(bad("unknown command")),
    }
    match family >> 4 {
        1 if rest.len() >= 12 => {
            let ip = Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 if rest.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        0 => Ok(None),
        _ => Err(bad("unsupported address family")),
    }
}

fn parse_v1(line: &[u8]) -> io::Result<Option<SocketAddr>> {
    let text = std::str::from_utf8(line).map_err(|_| bad("version 1 line is not text"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad("bad source address"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(bad("address does not match the family"));
            }
            let port: u16 = sport.parse().map_err(|_| bad("bad source port"))?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(bad("malformed version 1 line")),
    }
}

/// Makes `client` the peer address `stream` reports from now on.
pub fn set_peer<S: GetSocketDigest + UniqueID + ?Sized>(stream: &mut S, client: SocketAddr) {
    let digest = SocketDigest::from_raw_fd(stream.id());
    let _ = digest.peer_addr.set(Some(PeerAddr::Inet(client)));
    stream.set_socket_digest(digest);
}

/// Reads the header before the TLS handshake on HTTPS listeners.
pub struct BeforeTls {
    /// For the deadline (`http.header_timeout`).
    pub snapshot: SharedSnapshot,
}

#[async_trait]
impl PreTlsProcess for BeforeTls {
    async fn process(&self, stream: &mut L4Stream) -> pingora_error::Result<()> {
        let limit = self.snapshot.load().http.header_timeout;
        let read = tokio::time::timeout(limit, read_header(stream)).await;
        match read {
            Ok(Ok(Some(client))) => {
                set_peer(stream, client);
                Ok(())
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => {
                pingora_error::Error::e_explain(pingora_error::ErrorType::ReadError, e.to_string())
            }
            Err(_) => pingora_error::Error::e_explain(
                pingora_error::ErrorType::ReadTimedout,
                "PROXY protocol header not received in time",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> io::Result<Option<SocketAddr>> {
        let mut s: &[u8] = bytes;
        read_header(&mut s).await
    }

    #[tokio::test]
    async fn versions_one_and_two() {
        let got = parse(b"PROXY TCP4 203.0.113.7 10.0.0.1 5555 443\r\nGET").await;
        assert_eq!(
            got.expect("v1"),
            Some("203.0.113.7:5555".parse().expect("addr"))
        );
        let got = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 6000 443\r\n").await;
        assert_eq!(
            got.expect("v1 v6"),
            Some("[2001:db8::1]:6000".parse().expect("addr"))
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").await.expect("unknown"), None);
        assert!(parse(b"PROXY TCP4 nope 10.0.0.1 1 2\r\n").await.is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").await.is_err());
        assert!(parse(&[b'P'; 200]).await.is_err());

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 0x01, 0xbb,
        ]);
        assert_eq!(
            parse(&v2).await.expect("v2"),
            Some("198.51.100.9:8080".parse().expect("addr"))
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.expect("local"), None);
    }
}
