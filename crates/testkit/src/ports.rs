//! Finding free TCP ports on the loopback interface.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A port nothing listens on right now. Another process may still take it before the caller
/// binds it; callers retry with a new port when the server fails to start.
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// A port `p` such that `p` and `p + 10000` (the Redis Cluster bus port) are both free.
pub(crate) fn free_cluster_port() -> std::io::Result<u16> {
    // Walk a range below the kernel's ephemeral ports so that `p + 10000` stays valid, starting
    // from a per-process offset so that parallel test binaries rarely probe the same ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % 997) as u16 * 7;
    for _ in 0..2000 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + (offset + step) % 12000;
        if is_free(port) && is_free(port + 10000) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no free port pair (p, p+10000) between 20000 and 42000",
    ))
}
