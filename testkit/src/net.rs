//! Loopback ports and waiting: a port nothing listens on yet, one where every connection is
//! refused, a minimal HTTP GET (so tests need no HTTP client), and waiting for a condition.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A loopback port free when asked (another process may take it before the caller binds it;
/// the tests start their servers at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A loopback port where every connection is refused, and stays so while the guard
/// lives: a socket bound to the port but not listening holds it (no test or other process
/// can start a server there, as could happen to a port picked free and released) and the
/// kernel answers a connection with a reset.
pub fn refused_port() -> (socket2::Socket, u16) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    s.bind(&any.into()).expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the bound address")
        .port();
    (s, port)
}

/// [`refused_port`] as an address, `127.0.0.1:PORT`.
pub fn refused_address() -> (socket2::Socket, String) {
    let (s, port) = refused_port();
    (s, format!("127.0.0.1:{port}"))
}

/// Waits until something accepts connections at `addr`; false when `within` passed first.
pub fn wait_listening(addr: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// `GET path` over HTTP/1.0: (status, body), `None` when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until `f` holds, or panics with `what`.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
