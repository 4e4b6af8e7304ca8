//! A TCP proxy that injects faults into one link, for the multi-node tests the cluster
//! needs (issue 14): each link between two nodes goes through a proxy, and a test cuts
//! it, delays it or blackholes it while traffic flows, then heals it.
//!
//! - `Fault::None`: bytes pass as they come.
//! - `Fault::Delay(d)`: every chunk read waits `d` before it is passed on (a slow link;
//!   order is kept).
//! - `Fault::Blackhole`: connections stay open but bytes vanish in both directions, and
//!   new connections are accepted and go nowhere (a partition, as a peer sees it: silence,
//!   not an error). Bytes sent meanwhile are lost; connections accepted meanwhile are
//!   closed when the link heals.
//! - `Fault::Cut`: every open connection is shut down and new ones are closed at once (a
//!   dead peer, as the kernel reports it).
//!
//! Plain threads and blocking sockets: two per connection, bounded by the tests' own
//! connections. Every wait is bounded (reads time out every `POLL`), so a dropped proxy
//! stops its threads promptly.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Delay(Duration),
    Blackhole,
    Cut,
}

struct Shared {
    fault: Mutex<Fault>,
    stop: AtomicBool,
    /// Both ends of every connection still open, to shut them down on a cut or a stop.
    open: Mutex<Vec<(TcpStream, TcpStream)>>,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    fn shut_all(&self) {
        for (client, upstream) in self.open.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

pub struct FaultProxy {
    /// Where the link's client connects instead of `target`.
    pub address: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port, forwarding to `target`, with no fault.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept(listener, target, shared))
        };
        FaultProxy {
            address,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Changes the link's fault; a cut also shuts down every connection open now.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
        if fault == Fault::Cut {
            self.shared.shut_all();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.shut_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut pumps = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => continue,
        };
        client.set_nonblocking(false).unwrap();
        let upstream = match shared.fault() {
            Fault::Cut => continue, // dropped: the client sees the connection close
            Fault::Blackhole => {
                // Held open and never read from; closed when the link heals (the client
                // then reconnects) or the proxy stops.
                let shared = shared.clone();
                pumps.push(std::thread::spawn(move || hold(client, &shared)));
                continue;
            }
            Fault::None | Fault::Delay(_) => {
                match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                    Ok(upstream) => upstream,
                    Err(_) => continue, // the target is down: closed, as it would be
                }
            }
        };
        shared
            .open
            .lock()
            .unwrap()
            .push((client.try_clone().unwrap(), upstream.try_clone().unwrap()));
        for (from, to) in [
            (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
            (upstream, client),
        ] {
            let shared = shared.clone();
            pumps.push(std::thread::spawn(move || pump(from, to, &shared)));
        }
    }
    for pump in pumps {
        let _ = pump.join();
    }
}

/// A connection accepted while the link was blackholed: kept open, never answered.
fn hold(client: TcpStream, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) && shared.fault() == Fault::Blackhole {
        std::thread::sleep(POLL);
    }
    let _ = client.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` under the link's fault until either side closes, the link is
/// cut, or the proxy stops.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    from.set_read_timeout(Some(POLL)).unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue;
            }
            Err(_) => break,
        };
        match shared.fault() {
            Fault::None => {}
            Fault::Delay(delay) => std::thread::sleep(delay),
            Fault::Blackhole => continue,
            Fault::Cut => break,
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port; it serves until the test process ends.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        address
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        stream
    }

    /// Sends `message` and reads its echo: `Ok` with the round trip, or how it failed.
    fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Result<Duration, ErrorKind> {
        let started = Instant::now();
        stream.write_all(message).map_err(|error| error.kind())?;
        let mut echoed = vec![0u8; message.len()];
        let mut got = 0;
        while got < message.len() {
            match stream.read(&mut echoed[got..]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof),
                Ok(read) => got += read,
                Err(error) => return Err(error.kind()),
            }
        }
        assert_eq!(echoed, message);
        Ok(started.elapsed())
    }

    fn timed_out(outcome: Result<Duration, ErrorKind>) -> bool {
        matches!(outcome, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut))
    }

    fn closed(outcome: Result<Duration, ErrorKind>) -> bool {
        matches!(
            outcome,
            Err(ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::BrokenPipe
                | ErrorKind::ConnectionAborted)
        )
    }

    #[test]
    fn a_link_passes_delays_blackholes_cuts_and_heals() {
        let proxy = FaultProxy::start(echo_server());
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"plain").unwrap();

        proxy.set(Fault::Delay(Duration::from_millis(150)));
        let slow = round_trip(&mut stream, b"slow").unwrap();
        // Each direction waits once.
        assert!(slow >= Duration::from_millis(300), "{slow:?}");

        // Silence, not an error: the connection stays open and nothing comes back.
        proxy.set(Fault::Blackhole);
        assert!(timed_out(round_trip(&mut stream, b"lost")));
        let mut late = connect(&proxy);
        assert!(timed_out(round_trip(&mut late, b"unanswered")));
        proxy.set(Fault::None);
        // What was sent into the blackhole is gone; the same connection works again.
        round_trip(&mut stream, b"healed").unwrap();

        proxy.set(Fault::Cut);
        assert!(closed(round_trip(&mut stream, b"cut")));
        let mut refused = connect(&proxy);
        assert!(closed(round_trip(&mut refused, b"refused")));
        proxy.set(Fault::None);
        let mut fresh = connect(&proxy);
        round_trip(&mut fresh, b"fresh").unwrap();
    }

    #[test]
    fn a_dropped_proxy_closes_its_connections_and_stops_listening() {
        let proxy = FaultProxy::start(echo_server());
        let address = proxy.address;
        let mut stream = connect(&proxy);
        round_trip(&mut stream, b"before").unwrap();
        drop(proxy);
        assert!(closed(round_trip(&mut stream, b"after")));
        assert!(TcpStream::connect(address).is_err());
    }
}
