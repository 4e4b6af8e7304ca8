//! The metrics and health listener (`--metrics-listen`, default 127.0.0.1:9644):
//! Prometheus' `/metrics`, `/healthz` (the process is up) and `/readyz` (every shard is
//! serving, the metadata is loaded and, in a cluster, a controller is known).
//!
//! It runs on threads of its own, never on a shard's reactor thread: a slow or hostile
//! scraper cannot stall a shard, and a busy shard cannot stall a scrape. It reads the
//! shards' metrics through their atomics and snapshots (`crate::metrics`).
//!
//! A deliberately small HTTP/1.x server over `std::net`, written here because what it must
//! survive is what the general-purpose crates we tried do not: tiny_http 0.12's accept thread
//! panics when the process runs out of file descriptors (and its port then stays dead), and
//! it answers every request on one thread with no write timeout, so one client that does
//! not read blocked every health check. Here each connection gets a thread of its own (at
//! most `CONNECTIONS_MAX` at once; more are answered 503 at once), socket timeouts bound
//! every read and write, each connection answers one request and closes, and a failed
//! accept (EMFILE) is logged and retried.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::cluster::node::ClusterHandle;
use crate::metrics::Exposition;

/// Connections served at once; more are answered 503 and closed.
const CONNECTIONS_MAX: usize = 16;
/// Longest a client may take to send its request, or to take an answer's bytes.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// What `/readyz` looks at.
pub(super) struct Readiness {
    pub shards: usize,
    /// Shards that opened their partitions and listen.
    pub serving: Arc<AtomicUsize>,
    /// Set when the broker begins to stop.
    pub shutdown: Arc<AtomicBool>,
    pub cluster: Option<ClusterHandle>,
}

impl Readiness {
    /// `Ok` when ready, else what is missing.
    fn check(&self) -> Result<(), String> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Err("the broker is stopping".to_string());
        }
        let serving = self.serving.load(Ordering::SeqCst);
        if serving < self.shards {
            return Err(format!(
                "{serving} of {} shards are serving (the others are still opening their partitions)",
                self.shards
            ));
        }
        if let Some(cluster) = &self.cluster
            && cluster.leader().is_none()
        {
            return Err(format!(
                "node {} knows no controller (the cluster's metadata Raft group has no leader it can reach)",
                cluster.id
            ));
        }
        Ok(())
    }
}

/// Binds the metrics address (early, so that a port in use stops the start before
/// anything else happens); `start` serves it.
pub(super) fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address).map_err(|error| {
        format!(
            "cannot serve metrics on {address}: {error} (choose another with --metrics-listen HOST:PORT, or turn them off with --metrics-listen none)"
        )
    })
}

/// The running listener. Its threads end with the process (a broker stops by exiting).
pub(super) struct AdminServer {
    pub address: SocketAddr,
}

/// Serves `listener` on a thread of its own.
pub(super) fn start(
    listener: TcpListener,
    exposition: Exposition,
    readiness: Readiness,
) -> Result<AdminServer, String> {
    let address = listener
        .local_addr()
        .map_err(|error| format!("the metrics listener: {error}"))?;
    let shared = Arc::new((exposition, readiness));
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("spate-metrics".to_string())
        .spawn(move || accept_loop(listener, shared, busy))
        .map_err(|error| format!("cannot start the metrics thread: {error}"))?;
    Ok(AdminServer { address })
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<(Exposition, Readiness)>,
    busy: Arc<AtomicUsize>,
) {
    let mut warned = false;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                warned = false;
                stream
            }
            Err(error) => {
                // Out of descriptors, or the peer gave up before the accept: wait, retry.
                if !warned {
                    tracing::warn!(%error, "the metrics listener cannot accept a connection; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
        let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
        if busy.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            busy.fetch_sub(1, Ordering::SeqCst);
            let mut stream = stream;
            let _ = write_response(
                &mut stream,
                503,
                TEXT,
                b"too many metrics connections\n",
                false,
            );
            continue;
        }
        let shared = shared.clone();
        let finished = busy.clone();
        let spawned = std::thread::Builder::new()
            .name("spate-metrics-conn".to_string())
            .spawn(move || {
                serve(stream, &shared.0, &shared.1);
                finished.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one request on `stream`, then closes it.
fn serve(mut stream: TcpStream, exposition: &Exposition, readiness: &Readiness) {
    let Some((method, path)) = read_request_line(&mut stream) else {
        let _ = write_response(&mut stream, 400, TEXT, b"bad request\n", false);
        return;
    };
    let head_only = method == "HEAD";
    let path = path.split('?').next().unwrap_or("");
    let _ = if method != "GET" && !head_only {
        write_response(&mut stream, 405, TEXT, b"only GET is served here\n", false)
    } else {
        match path {
            "/metrics" => write_response(
                &mut stream,
                200,
                crate::metrics::CONTENT_TYPE,
                exposition.render().as_bytes(),
                head_only,
            ),
            "/healthz" => write_response(&mut stream, 200, TEXT, b"ok\n", head_only),
            "/readyz" => match readiness.check() {
                Ok(()) => write_response(&mut stream, 200, TEXT, b"ready\n", head_only),
                Err(reason) => write_response(
                    &mut stream,
                    503,
                    TEXT,
                    format!("not ready: {reason}\n").as_bytes(),
                    head_only,
                ),
            },
            _ => write_response(
                &mut stream,
                404,
                TEXT,
                b"not found: try /metrics, /healthz or /readyz\n",
                head_only,
            ),
        }
    };
}

/// The method and path of the request on `stream`, once its head has arrived (the rest
/// of the head, and any body, is ignored).
fn read_request_line(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n")
        && !head.windows(2).any(|window| window == b"\n\n")
    {
        if head.len() >= REQUEST_HEAD_BYTES_MAX {
            return None;
        }
        let read = stream.read(&mut chunk).ok()?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
    }
    let line = head.split(|byte| *byte == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut words = line.split_whitespace();
    let (method, path, version) = (words.next()?, words.next()?, words.next()?);
    version
        .starts_with("HTTP/1.")
        .then(|| (method.to_string(), path.to_string()))
}

fn write_response(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the close (unread request bytes would make
    // the close a reset that discards it).
    let mut sink = [0u8; 512];
    while matches!(stream.read(&mut sink), Ok(1..)) {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_client_that_never_reads_does_not_block_the_health_check() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let exposition = Exposition::new(Vec::new(), std::env::temp_dir(), 10);
        let readiness = Readiness {
            shards: 0,
            serving: Arc::new(AtomicUsize::new(0)),
            shutdown: Arc::new(AtomicBool::new(false)),
            cluster: None,
        };
        let server = start(listener, exposition, readiness).unwrap();
        // Sends half a request and then nothing, holding a connection open.
        let mut stuck = TcpStream::connect(server.address).unwrap();
        stuck.write_all(b"GET /metr").unwrap();
        let mut probe = TcpStream::connect(server.address).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        probe.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
        drop(stuck);
    }
}
