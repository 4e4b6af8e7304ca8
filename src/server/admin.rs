//! The metrics and health listener (`--metrics-listen`, default 127.0.0.1:9644):
//! Prometheus' `/metrics`, `/healthz` (the process is up) and `/readyz` (every shard is
//! serving, the metadata is loaded and, in a cluster, a controller is known).
//!
//! It runs on a thread of its own with `tiny_http`, never on a shard's reactor: a slow or
//! hostile scraper cannot stall a shard, and a busy shard cannot stall a scrape. It reads
//! the shards' metrics through their atomics and snapshots (`crate::metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::cluster::node::ClusterHandle;
use crate::metrics::Exposition;

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

/// The running listener; dropping it stops the thread.
pub(super) struct AdminServer {
    server: Arc<tiny_http::Server>,
    pub address: SocketAddr,
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// Binds `address` and serves it on a new thread.
pub(super) fn start(
    address: SocketAddr,
    exposition: Exposition,
    readiness: Readiness,
) -> Result<AdminServer, String> {
    let server = tiny_http::Server::http(address).map_err(|error| {
        format!(
            "cannot serve metrics on {address}: {error} (choose another with --metrics-listen HOST:PORT, or turn them off with --metrics-listen none)"
        )
    })?;
    let server = Arc::new(server);
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| format!("the metrics listener on {address} is not an IP socket"))?;
    let serving = server.clone();
    std::thread::Builder::new()
        .name("spate-metrics".to_string())
        .spawn(move || {
            for request in serving.incoming_requests() {
                respond(request, &exposition, &readiness);
            }
        })
        .map_err(|error| format!("cannot start the metrics thread: {error}"))?;
    Ok(AdminServer {
        server,
        address: bound,
    })
}

fn respond(request: tiny_http::Request, exposition: &Exposition, readiness: &Readiness) {
    use tiny_http::{Header, Method, Response};
    let header = |value: &str| {
        Header::from_bytes(&b"Content-Type"[..], value.as_bytes()).expect("a valid header")
    };
    let text = "text/plain; charset=utf-8";
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let response = if !matches!(request.method(), Method::Get | Method::Head) {
        Response::from_string("only GET is served here\n")
            .with_status_code(405)
            .with_header(header(text))
    } else {
        match path.as_str() {
            "/metrics" => Response::from_string(exposition.render())
                .with_header(header(crate::metrics::CONTENT_TYPE)),
            "/healthz" => Response::from_string("ok\n").with_header(header(text)),
            "/readyz" => match readiness.check() {
                Ok(()) => Response::from_string("ready\n").with_header(header(text)),
                Err(reason) => Response::from_string(format!("not ready: {reason}\n"))
                    .with_status_code(503)
                    .with_header(header(text)),
            },
            _ => Response::from_string("not found: try /metrics, /healthz or /readyz\n")
                .with_status_code(404)
                .with_header(header(text)),
        }
    };
    // A scraper that went away is no concern of the broker's.
    let _ = request.respond(response);
}
