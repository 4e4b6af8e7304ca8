//! One client connection: a reader that splits frames and starts a handler per request
//! (up to the in-flight limits on requests and on bytes), and a writer that sends answers
//! as they complete, gathering the small ones that are ready together into one send.
//!
//! A connection ends when the client closes it, sends an unusable frame, stays idle past
//! `connections_max_idle_ms`, does not take its answers within the write timeout, or when
//! the shard stops. In every case the requests already started are finished and their
//! answers sent (or the write gives up) before the socket is closed: an append that was
//! written is acknowledged if the client is still there to hear it.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::handlers::{self, Outgoing};
use super::shard::{FetchPayload, Shard};
use crate::metrics::Protocol;
use crate::protocol::{ApiKey, Piece, decode_request_header, split_frame};
use crate::wake::Latch;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A client that takes none of an answer's bytes for this long is dropped, so a reader
/// that stalls cannot pin the answers (and the log buffers they reference) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a closing connection keeps reading (and discarding) so its last answers reach
/// the client; see the end of `serve`.
const LINGER: Duration = Duration::from_secs(2);

/// An answer on its way to the writer, holding its request's share of the connection's
/// byte budget until it is written.
struct Answer {
    outgoing: Outgoing,
    held: Rc<handlers::Held>,
}

/// Which protocol a connection speaks. Both frame requests the same way (a 4-byte
/// big-endian length, then the request); they differ in headers, bodies and in the order
/// of answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// Spate's own protocol: answers go out as they are ready (clients match them by
    /// correlation id).
    Native,
    /// Kafka's protocol: answers go out in request order, as Kafka clients require.
    Kafka,
}

impl Door {
    /// The index of this door's series in the shard's metrics.
    pub(crate) fn protocol(self) -> usize {
        match self {
            Door::Native => Protocol::Native as usize,
            Door::Kafka => Protocol::Kafka as usize,
        }
    }
}

/// What the writer receives: an answer ready now, or (Kafka) the place in the answer
/// order of a request still being worked on; a request that owes no answer (acks=0)
/// drops its sender.
enum Slot {
    Ready(Answer),
    Awaiting(oneshot::Receiver<Answer>),
}

/// A decoded request of either protocol.
pub(crate) enum Work {
    Native(crate::protocol::Request),
    Kafka(super::kafka::KafkaWork),
}

/// Requests whose latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Produce,
    Fetch,
    Other,
}

/// A request's API key (in its protocol's numbering) and class, for the metrics.
#[derive(Debug, Clone, Copy)]
struct Kind {
    key: usize,
    class: Class,
}

impl Work {
    fn kind(&self) -> Kind {
        match self {
            Work::Native(request) => {
                let key = request.api_key();
                let class = match key {
                    ApiKey::Produce => Class::Produce,
                    ApiKey::Fetch => Class::Fetch,
                    _ => Class::Other,
                };
                Kind {
                    key: key as usize,
                    class,
                }
            }
            Work::Kafka(work) => {
                let key = work.api_key();
                let class = match key {
                    crate::kafka::api::PRODUCE => Class::Produce,
                    crate::kafka::api::FETCH => Class::Fetch,
                    _ => Class::Other,
                };
                Kind {
                    key: usize::try_from(key).unwrap_or(usize::MAX),
                    class,
                }
            }
        }
    }
}

/// What the reader makes of one frame.
pub(crate) struct Decoded {
    pub correlation_id: u32,
    /// The request, or the answer for one that cannot be served (unknown kind,
    /// unsupported version, malformed body).
    pub work: Result<Work, Outgoing>,
    /// Its share of the connection's byte budget (see `handlers::weigh`).
    pub weight: usize,
}

/// Splits the request header off a frame and decodes the request; `Err` names why the
/// connection must close instead.
fn decode_frame(door: Door, frame: Bytes, bytes_max: usize) -> Result<Decoded, String> {
    match door {
        Door::Native => {
            let frame_bytes = frame.len();
            let (header, body) = decode_request_header(frame)
                .map_err(|error| format!("truncated request header: {error}"))?;
            let correlation_id = header.correlation_id;
            Ok(match handlers::decode(&header, body) {
                Ok((mut request, entries)) => {
                    let weight = handlers::weigh(&mut request, frame_bytes, entries, bytes_max);
                    Decoded {
                        correlation_id,
                        work: Ok(Work::Native(request)),
                        weight,
                    }
                }
                Err(failure) => Decoded {
                    correlation_id,
                    work: Err(failure),
                    weight: frame_bytes.min(bytes_max),
                },
            })
        }
        Door::Kafka => super::kafka::decode(frame, bytes_max),
    }
}

pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream, door: Door) {
    let peer = stream
        .peer_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let idle = Duration::from_millis(shard.config.connections_max_idle_ms);
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    // For `recv_into_spare`: open for as long as the reader half (which owns the stream
    // with the writer half) lives, and the reader lives until the loop below ends.
    let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    // Set when the connection is ending: the reader stops, and waiting requests (long
    // polls) answer with what they have.
    let closed = Rc::new(Latch::default());
    let in_flight_max = shard.config.in_flight_max_per_connection;
    let (answers, pending) = local_channel::new_bounded::<Slot>(in_flight_max);
    let metrics = shard.metrics.clone();
    let protocol = door.protocol();
    let writer_task = glommio::spawn_local({
        let closed = closed.clone();
        let peer = peer.clone();
        let metrics = metrics.clone();
        async move {
            let mut out = Coalescer::default();
            'writing: while let Some(first) = pending.recv().await {
                // Take every answer already waiting, so small ones leave in one send.
                let mut next = Some(first);
                let mut close = false;
                while let Some(slot) = next.take() {
                    let answer = match slot {
                        Slot::Ready(answer) => Some(answer),
                        Slot::Awaiting(mut later) => {
                            match futures_lite::future::poll_once(&mut later).await {
                                Some(answer) => answer.ok(),
                                None => {
                                    // What is ready goes out before waiting on the rest.
                                    if let Err(error) = out.flush(&mut writer).await {
                                        tracing::info!(%peer, %error, "closing the connection: cannot send an answer");
                                        break 'writing;
                                    }
                                    later.await.ok()
                                }
                            }
                        }
                    };
                    if let Some(answer) = answer {
                        if matches!(answer.outgoing, Outgoing::Close) {
                            close = true;
                            break;
                        }
                        if let Err(error) = out.add(&mut writer, answer).await {
                            tracing::info!(%peer, %error, "closing the connection: cannot send an answer");
                            break 'writing;
                        }
                    }
                    if out.buffered() < COALESCE_BYTES {
                        next = futures_lite::future::poll_once(pending.recv())
                            .await
                            .flatten();
                    }
                }
                let flushed = out.flush(&mut writer).await;
                metrics.sent_bytes[protocol].add(std::mem::take(&mut out.sent));
                if let Err(error) = flushed {
                    tracing::info!(%peer, %error, "closing the connection: cannot send an answer");
                    break;
                }
                if close {
                    break;
                }
            }
            // Answers not written give their budget shares back now.
            drop(out);
            closed.set();
            let _ = writer.close().await;
            // Handlers still finishing send their answers here: take and drop them until
            // the last sender is gone, or they would wait forever on a full channel with
            // their permits held, and the connection would never end.
            while pending.recv().await.is_some() {}
        }
    });
    let in_flight = Rc::new(Semaphore::new(in_flight_max as u64));
    let bytes_max = shard.config.buffered_bytes_max_per_connection;
    let in_flight_bytes = Rc::new(Semaphore::new(bytes_max as u64));
    let answers = Rc::new(answers);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // A large frame read into a buffer of its own (see `large_incomplete`).
    let mut whole: Option<Bytes> = None;
    // After a large frame, the next may be large too: read just its start, so that little
    // has to be copied into its own buffer.
    let mut after_large = false;
    let mut client_done = false;
    // Resolves when the shard stops or the connection is closing: every wait of the
    // reader races it, so the reader never outlives its connection.
    let ending = || futures_lite::future::or(shard.stopping.wait(), closed.wait());
    'connection: loop {
        loop {
            if closed.is_set() || shard.stopping.is_set() {
                break 'connection;
            }
            let frame_max = shard.config.frame_bytes_max;
            let own_frame = whole.is_some();
            let split = match whole.take() {
                Some(frame) => Ok(Some(frame)),
                None if large_incomplete(&buffer, frame_max).is_some() => Ok(None),
                None => split_frame(&mut buffer, frame_max),
            };
            let frame = match split {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    metrics.malformed_frames[protocol].inc();
                    tracing::warn!(%peer, %error, "closing the connection: unusable frame");
                    break 'connection;
                }
            };
            let frame_bytes = frame.len();
            let started = std::time::Instant::now();
            metrics.received_bytes[protocol].add(4 + frame_bytes as u64);
            let Decoded {
                correlation_id,
                work,
                weight,
            } = match decode_frame(door, frame, bytes_max) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    metrics.malformed_frames[protocol].inc();
                    tracing::warn!(%peer, ?door, %reason, "closing the connection");
                    break 'connection;
                }
            };
            let kind = work.as_ref().ok().map(Work::kind);
            if let Some(kind) = kind {
                metrics.request(Protocol::ALL[protocol], kind.key);
            }
            // Stop reading while too many requests of this connection, or too many of
            // their bytes, are in flight.
            // Then while the shard's requests in flight, of all its connections, hold its
            // share of the memory budget: new requests wait (backpressure).
            let permits = async {
                let permit = in_flight.clone().acquire_static_permit(1).await.ok()?;
                let connection = in_flight_bytes
                    .clone()
                    .acquire_static_permit(weight as u64)
                    .await
                    .ok()?;
                let shard_weight = (weight as u64).min(shard.request_bytes_max);
                let shard_share = shard
                    .request_bytes
                    .clone()
                    .acquire_static_permit(shard_weight)
                    .await
                    .ok()?;
                Some((
                    permit,
                    handlers::Held {
                        _connection: connection,
                        _shard: shard_share,
                    },
                ))
            };
            let ended = async {
                ending().await;
                None
            };
            let Some((permit, held)) = futures_lite::future::or(permits, ended).await else {
                break 'connection;
            };
            let shard = shard.clone();
            let answers = answers.clone();
            let exchange = handlers::Exchange {
                correlation_id,
                frame_bytes,
                own_frame,
                closed: closed.clone(),
                // Shared: an append that outlives its answer (a produce timeout) keeps
                // its bytes counted until it is done with them.
                held: Rc::new(held),
                budget: in_flight_bytes.clone(),
            };
            // Kafka answers in request order: the writer gets this request's place now.
            let place = match door {
                Door::Native => None,
                Door::Kafka => {
                    let (place, later) = oneshot::channel();
                    if answers.send(Slot::Awaiting(later)).await.is_err() {
                        break 'connection;
                    }
                    Some(place)
                }
            };
            glommio::spawn_local(async move {
                let outgoing = match work {
                    Ok(Work::Native(request)) => handlers::handle(shard, request, &exchange).await,
                    Ok(Work::Kafka(request)) => {
                        super::kafka::handle(shard, request, &exchange).await
                    }
                    Err(failure) => Some(failure),
                };
                crate::metrics::with(|metrics| match kind.map(|kind| kind.class) {
                    Some(Class::Produce) => {
                        metrics.produce_latency[protocol].observe_duration(started.elapsed());
                    }
                    Some(Class::Fetch) => {
                        metrics.fetch_latency[protocol].observe_duration(started.elapsed());
                    }
                    _ => {}
                });
                if let Some(outgoing) = outgoing {
                    let answer = Answer {
                        outgoing,
                        held: exchange.held,
                    };
                    match place {
                        Some(place) => {
                            let _ = place.send(answer);
                        }
                        None => {
                            let _ = answers.send(Slot::Ready(answer)).await;
                        }
                    }
                }
                drop(permit);
            })
            .detach();
        }
        let filled = buffer.len();
        if let Some(length) = large_incomplete(&buffer, shard.config.frame_bytes_max) {
            // The rest of a large frame goes straight into a buffer of its own, which the
            // frame then owns alone: a produce hands its batches to the log without a copy.
            let total = 4 + length;
            let mut own = BytesMut::with_capacity(total);
            own.extend_from_slice(&buffer);
            buffer.clear();
            let mut at = filled;
            while at < total {
                // A client that announces a large frame and sends little of it commits no
                // more memory than it sent: `receive` fills only what arrives.
                match receive(socket, &mut reader, &mut own, total - at, ending).await {
                    Read::Bytes(read) => at += read,
                    Read::Idle if in_flight.available() < in_flight_max as u64 => {}
                    Read::Idle => {
                        tracing::info!(%peer, idle_ms = idle.as_millis() as u64, "closing an idle connection");
                        break 'connection;
                    }
                    Read::Eof => {
                        client_done = true;
                        break 'connection;
                    }
                    Read::End => break 'connection,
                }
            }
            own.advance(4);
            whole = Some(own.freeze());
            after_large = true;
            continue;
        }
        let chunk = if after_large && filled == 0 {
            FIRST_READ_AFTER_LARGE_BYTES
        } else {
            READ_CHUNK_BYTES
        };
        after_large = false;
        match receive(socket, &mut reader, &mut buffer, chunk, ending).await {
            Read::Bytes(_) => {}
            Read::Idle => {
                // Idle means no requests at all: one still being answered (a long poll)
                // keeps the connection.
                if in_flight.available() < in_flight_max as u64 {
                    continue;
                }
                tracing::info!(%peer, idle_ms = idle.as_millis() as u64, "closing an idle connection");
                break;
            }
            Read::Eof => {
                client_done = true;
                break;
            }
            Read::End => break,
        }
    }
    closed.set();
    // Let the answers already started go out, then close.
    let _ = in_flight.acquire(in_flight_max as u64).await;
    drop(answers);
    writer_task.await;
    if !client_done {
        // Closing a socket with unread input makes the kernel send a reset, and a reset
        // destroys the answers still in the client's receive buffer. So after the FIN
        // (sent by the writer), read and discard until the client closes too, for a
        // bounded time, as web servers do ("lingering close").
        let linger = async {
            let mut sink = vec![0u8; READ_CHUNK_BYTES];
            while let Ok(read) = reader.read(&mut sink).await {
                if read == 0 {
                    break;
                }
            }
        };
        futures_lite::future::or(linger, glommio::timer::sleep(LINGER)).await;
    }
}

/// What is read of the stream right after a large frame: enough for the next request's
/// length and header, little to copy if that request is large as well.
const FIRST_READ_AFTER_LARGE_BYTES: usize = 512;

/// Frames at least this large are read into a buffer of their own rather than the shared
/// read buffer (from which a frame is a slice that other frames' bytes keep alive).
const LARGE_FRAME_BYTES: usize = 32 * 1024;

/// The length of the frame at the front of `buffer` if it is large, allowed, and not yet
/// whole.
fn large_incomplete(buffer: &BytesMut, frame_bytes_max: usize) -> Option<usize> {
    let length = u32::from_be_bytes(buffer.get(..4)?.try_into().ok()?) as usize;
    let large = length + 4 >= LARGE_FRAME_BYTES && length <= frame_bytes_max;
    (large && buffer.len() < length + 4).then_some(length)
}

/// How much the reader asks the stream for when the socket had nothing: the wait's read
/// is into zeroed memory, the reads after it (`recv_into_spare`) into uninitialised
/// memory.
const WAIT_READ_BYTES: usize = 512;

/// Appends at most `want` more bytes from the connection to `buffer`. What the socket holds
/// now goes straight into the buffer's spare capacity, with no zeroing first (a produce's
/// payload is written to the log from there; zero-filling 64 KiB before each read was 7% of
/// a busy broker's core). Only when it holds nothing does the reader wait through the
/// stream (its idle timeout and the connection's end apply), reading a little into zeroed
/// memory. `buffer` holds exactly what arrived, whatever the outcome.
async fn receive<R, E, F>(
    socket: RawFd,
    reader: &mut R,
    buffer: &mut BytesMut,
    want: usize,
    ending: E,
) -> Read
where
    R: futures_lite::AsyncRead + Unpin,
    E: FnOnce() -> F,
    F: std::future::Future<Output = ()>,
{
    buffer.reserve(want);
    match recv_into_spare(socket, buffer, want) {
        Ok(0) => return Read::Eof,
        Ok(read) => return Read::Bytes(read),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) => {}
        Err(_) => return Read::End,
    }
    let filled = buffer.len();
    buffer.resize(filled + want.min(WAIT_READ_BYTES), 0);
    let read = read_or_end(reader, &mut buffer[filled..], ending()).await;
    let arrived = match read {
        Read::Bytes(read) => read,
        _ => 0,
    };
    buffer.truncate(filled + arrived);
    read
}

/// Receives at most `want` bytes that the socket holds now (never waiting) into `buffer`'s
/// spare capacity, which must hold them, and extends it by what arrived. `Ok(0)`: the peer
/// closed its side.
fn recv_into_spare(socket: RawFd, buffer: &mut BytesMut, want: usize) -> std::io::Result<usize> {
    let spare = buffer.spare_capacity_mut();
    let want = want.min(spare.len());
    assert!(want > 0, "room for what is received");
    // SAFETY: recv writes at most `want` bytes into the spare capacity, which is valid for
    // writes of that many bytes (uninitialised memory is fine to write to); `set_len` then
    // covers only the bytes it reported written.
    let received = unsafe {
        libc::recv(
            socket,
            spare.as_mut_ptr().cast::<libc::c_void>(),
            want,
            libc::MSG_DONTWAIT,
        )
    };
    if received < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let received = received as usize;
    // SAFETY: the first `received` bytes of the spare capacity were just written.
    unsafe { buffer.set_len(buffer.len() + received) };
    Ok(received)
}

/// What one read of the socket gave.
enum Read {
    Bytes(usize),
    /// Nothing for `connections_max_idle_ms` (the socket's read timeout).
    Idle,
    /// The client closed its side.
    Eof,
    /// The connection is ending (stop or close), or the read failed.
    End,
}

async fn read_or_end<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    into: &mut [u8],
    ending: impl std::future::Future<Output = ()>,
) -> Read {
    let read = futures_lite::future::or(async { Some(reader.read(into).await) }, async {
        ending.await;
        None
    })
    .await;
    match read {
        Some(Ok(0)) => Read::Eof,
        Some(Ok(read)) => Read::Bytes(read),
        Some(Err(error)) if error.kind() == std::io::ErrorKind::TimedOut => Read::Idle,
        Some(Err(_)) | None => Read::End,
    }
}

/// Answers are gathered into one buffer and sent together, so that a burst of small ones
/// (produce acknowledgements, fetches of a few records) costs one send, not one per piece.
/// Record chunks of `DIRECT_CHUNK_BYTES` or more are not copied: the buffer is sent, then
/// the chunk straight from the tail cache or the disk read buffer.
const COALESCE_BYTES: usize = 256 * 1024;
const DIRECT_CHUNK_BYTES: usize = 16 * 1024;

/// Bytes waiting to be sent, and the budget shares of the answers they belong to (given
/// back once those bytes are written).
#[derive(Default)]
struct Coalescer {
    buffer: Vec<u8>,
    /// Bytes handed to the socket since the writer last counted them.
    sent: u64,
    held: Vec<Rc<handlers::Held>>,
    rooms: Vec<handlers::fetch::Room>,
}

impl Coalescer {
    fn buffered(&self) -> usize {
        self.buffer.len()
    }

    async fn add<W: futures_lite::AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        answer: Answer,
    ) -> std::io::Result<()> {
        self.held.push(answer.held);
        match answer.outgoing {
            Outgoing::Frame(frame) => self.bytes(writer, &frame).await?,
            Outgoing::Pieces(pieces, room) => {
                self.rooms.extend(room);
                for piece in pieces {
                    match piece {
                        Piece::Encoded(bytes) => self.bytes(writer, &bytes).await?,
                        Piece::Payload(FetchPayload::Remote(bytes)) => {
                            self.bytes(writer, &bytes).await?
                        }
                        Piece::Payload(FetchPayload::Local(chunks)) => {
                            for chunk in chunks {
                                self.bytes(writer, &chunk).await?;
                            }
                        }
                    }
                }
            }
            Outgoing::Close => unreachable!("a close is handled by the writer"),
        }
        if self.buffer.is_empty() {
            // All of it is written: its budget shares go back now, not with the batch.
            self.held.clear();
            self.rooms.clear();
        }
        Ok(())
    }

    /// Buffers small `bytes`; sends large ones directly, after what is buffered. The
    /// buffer never grows past `COALESCE_BYTES` (a fetch of many small batches is sent a
    /// buffer at a time).
    async fn bytes<W: futures_lite::AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let direct = bytes.len() >= DIRECT_CHUNK_BYTES;
        if (direct || self.buffer.len() + bytes.len() > COALESCE_BYTES) && !self.buffer.is_empty() {
            writer.write_all(&self.buffer).await?;
            self.sent += self.buffer.len() as u64;
            self.buffer.clear();
        }
        if direct {
            writer.write_all(bytes).await?;
            self.sent += bytes.len() as u64;
            Ok(())
        } else {
            self.buffer.extend_from_slice(bytes);
            Ok(())
        }
    }

    /// Sends what is buffered and gives back the shares of the answers now written.
    async fn flush<W: futures_lite::AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            writer.write_all(&self.buffer).await?;
            self.sent += self.buffer.len() as u64;
            self.buffer.clear();
        }
        if self.buffer.capacity() > COALESCE_BYTES * 2 {
            self.buffer = Vec::new();
        }
        self.held.clear();
        self.rooms.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_length(length: u32, present: usize) -> BytesMut {
        let mut buffer = BytesMut::new();
        buffer.extend_from_slice(&length.to_be_bytes());
        buffer.resize(4 + present, 0);
        buffer
    }

    #[test]
    fn only_large_allowed_unfinished_frames_get_a_buffer_of_their_own() {
        let large = (LARGE_FRAME_BYTES * 2) as u32;
        assert_eq!(
            large_incomplete(&with_length(large, 10), 1 << 20),
            Some(large as usize)
        );
        // Whole already, small, over the limit (split_frame refuses it), or no length yet.
        assert_eq!(
            large_incomplete(&with_length(large, large as usize), 1 << 20),
            None
        );
        assert_eq!(large_incomplete(&with_length(100, 10), 1 << 20), None);
        assert_eq!(large_incomplete(&with_length(large, 10), 1000), None);
        assert_eq!(
            large_incomplete(&BytesMut::from(&[0u8, 1][..]), 1 << 20),
            None
        );
    }
}
