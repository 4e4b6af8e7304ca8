//! A connection that keeps many requests in flight: the way to drive a broker at speed
//! (the load generator's producers use it). It speaks either protocol through [`Wire`]:
//! Spate's own ([`Native`], the default) or Kafka's (`kafka::client::KafkaWire`); both
//! frame answers as a 4-byte length and a 4-byte correlation id, answered in order. `send` writes a request and returns at once,
//! blocking only while `max_in_flight` requests are unanswered; a reader thread decodes
//! each answer and hands it, with the caller's token, to the `answers` channel.
//!
//! The connection's answer timeout (`Connection::connect_with_timeout`) still holds: when
//! the oldest request has waited that long, or a write fails part way (leaving a torn
//! frame), the pipeline fails, and every request still in flight comes back on `answers`
//! with the error.

use std::collections::HashMap;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{ClientError, Connection};
use crate::protocol::{ApiKey, FRAME_BYTES_MAX_DEFAULT, Request, Response, split_frame};

/// A protocol a pipeline speaks: how a request becomes a frame, and what the reader needs
/// to turn the answer's body (after the correlation id) into a response.
pub trait Wire: Send + 'static {
    type Request;
    type Response: Send + 'static;
    /// What the reader keeps per request to decode its answer.
    type Expect: Send + 'static;
    /// The whole frame, length prefix included.
    fn encode(&self, request: &Self::Request, correlation_id: u32) -> (BytesMut, Self::Expect);
    fn decode(expect: Self::Expect, body: Bytes) -> Result<Self::Response, ClientError>;
}

/// Spate's own protocol.
pub struct Native;

impl Wire for Native {
    type Request = Request;
    type Response = Response;
    type Expect = ApiKey;

    fn encode(&self, request: &Request, correlation_id: u32) -> (BytesMut, ApiKey) {
        (request.encode(correlation_id), request.api_key())
    }

    fn decode(api_key: ApiKey, body: Bytes) -> Result<Response, ClientError> {
        Ok(Response::decode(api_key, body)?)
    }
}

/// One answer: the token given to `send`, the response (or why there is none), and when
/// it arrived.
pub struct Answer<T, R = Response> {
    pub token: T,
    pub response: Result<R, ClientError>,
    pub received: Instant,
}

pub struct Pipeline<T: Send + 'static, W: Wire = Native> {
    wire: W,
    stream: TcpStream,
    next_correlation_id: u32,
    slots: Arc<Slots>,
    pending: mpsc::Sender<Sent<T, W::Expect>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// A request on its way: what the reader needs to decode and hand back its answer.
struct Sent<T, E> {
    correlation_id: u32,
    expect: E,
    token: T,
    at: Instant,
}

/// How often the reader wakes to check the oldest request's age while no answer comes.
const AGE_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Requests in flight, bounded; `failed` once the reader has stopped.
struct Slots {
    state: Mutex<(usize, bool)>,
    freed: Condvar,
    max: usize,
}

impl<T: Send + 'static> Pipeline<T> {
    /// Takes over a connected (handshaken) connection; answers go to `answers`.
    pub fn new(
        connection: Connection,
        max_in_flight: usize,
        answers: mpsc::Sender<Answer<T>>,
    ) -> Result<Pipeline<T>, ClientError> {
        let (stream, buffer, next_correlation_id) = connection.into_parts();
        Pipeline::start(
            Native,
            stream,
            buffer,
            next_correlation_id,
            max_in_flight,
            answers,
        )
    }
}

impl<T: Send + 'static, W: Wire> Pipeline<T, W> {
    /// Takes over a connected stream that speaks `wire` (`buffer`: bytes already read from
    /// it; `next_correlation_id`: the first id to use).
    pub fn start(
        wire: W,
        stream: TcpStream,
        buffer: BytesMut,
        next_correlation_id: u32,
        max_in_flight: usize,
        answers: mpsc::Sender<Answer<T, W::Response>>,
    ) -> Result<Pipeline<T, W>, ClientError> {
        let answer_timeout = stream.read_timeout()?;
        let reading = stream.try_clone()?;
        // The reader wakes now and then to judge the oldest request's age; no answer at
        // all is fine while nothing is in flight.
        reading.set_read_timeout(answer_timeout.map(|limit| limit.min(AGE_CHECK_INTERVAL)))?;
        let slots = Arc::new(Slots {
            state: Mutex::new((0, false)),
            freed: Condvar::new(),
            max: max_in_flight.max(1),
        });
        let (pending, sent) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("spate-pipeline".into())
            .spawn({
                let slots = slots.clone();
                move || read_answers::<T, W>(reading, buffer, sent, answers, &slots, answer_timeout)
            })?;
        Ok(Pipeline {
            wire,
            stream,
            next_correlation_id,
            slots,
            pending,
            reader: Some(reader),
        })
    }

    /// Sends `request`; its answer comes to the channel with `token`. Blocks while the
    /// pipeline is full. Every token `send` takes comes back on the channel exactly once,
    /// with an answer or with the reason there is none. Fails without taking the token
    /// once the pipeline has failed; fails after taking it when the write fails (part
    /// way, perhaps, so that fails the pipeline), and the token then comes back with the
    /// failure like every other request in flight.
    pub fn send(&mut self, request: &W::Request, token: T) -> Result<(), ClientError> {
        self.try_send(request, token).map_err(|(error, _)| error)
    }

    /// `send`, giving the token back when the request was never taken (the pipeline had
    /// failed): `Err((error, Some(token)))`. With `Err((error, None))` the write failed
    /// after the request was taken, and its token comes back on `answers` with the
    /// failure. A caller that sends a request again elsewhere (a leader moved) needs it.
    pub fn try_send(
        &mut self,
        request: &W::Request,
        token: T,
    ) -> Result<(), (ClientError, Option<T>)> {
        let correlation_id = self.next_correlation_id;
        let (frame, expect) = self.wire.encode(request, correlation_id);
        {
            let mut state = self.slots.state.lock().expect("not poisoned");
            while state.0 >= self.slots.max && !state.1 {
                state = self.slots.freed.wait(state).expect("not poisoned");
            }
            if state.1 {
                return Err((closed(), Some(token)));
            }
            // Registered under the lock the reader takes to fail the pipeline, so the
            // reader either sees this request or it is never registered.
            let sent = Sent {
                correlation_id,
                expect,
                token,
                at: Instant::now(),
            };
            if let Err(unsent) = self.pending.send(sent) {
                return Err((closed(), Some(unsent.0.token)));
            }
            state.0 += 1;
        }
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.write(&frame).map_err(|error| (error, None))
    }

    /// Writes a whole frame, or fails the pipeline: after a partial write the stream holds
    /// a torn frame and nothing more may follow it.
    fn write(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(frame).map_err(|error| {
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
            ClientError::from(error)
        })
    }

    /// Sends a request that gets no answer (a produce with acks=0).
    pub fn send_unanswered(&mut self, request: &W::Request) -> Result<(), ClientError> {
        if self.slots.state.lock().expect("not poisoned").1 {
            return Err(closed());
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let (frame, _) = self.wire.encode(request, correlation_id);
        self.write(&frame)
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots.state.lock().expect("not poisoned").0
    }

    /// Waits until every request sent has been answered, or the pipeline has failed (at
    /// the latest when the oldest request is older than the answer timeout).
    pub fn drain(&self) {
        let mut state = self.slots.state.lock().expect("not poisoned");
        while state.0 > 0 && !state.1 {
            state = self.slots.freed.wait(state).expect("not poisoned");
        }
    }
}

impl<T: Send + 'static, W: Wire> Drop for Pipeline<T, W> {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn closed() -> ClientError {
    ClientError::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the connection to the broker is closed",
    ))
}

fn read_answers<T, W: Wire>(
    mut stream: TcpStream,
    mut buffer: BytesMut,
    sent: mpsc::Receiver<Sent<T, W::Expect>>,
    answers: mpsc::Sender<Answer<T, W::Response>>,
    slots: &Slots,
    answer_timeout: Option<Duration>,
) {
    let mut waiting: HashMap<u32, Sent<T, W::Expect>> = HashMap::new();
    let take_sent = |waiting: &mut HashMap<u32, Sent<T, W::Expect>>| {
        while let Ok(request) = sent.try_recv() {
            waiting.insert(request.correlation_id, request);
        }
    };
    // Whether the oldest request has waited longer than the answer timeout.
    let overdue = |waiting: &HashMap<u32, Sent<T, W::Expect>>| {
        let oldest = waiting.values().map(|request| request.at).min();
        answer_timeout
            .zip(oldest)
            .is_some_and(|(limit, oldest)| oldest.elapsed() >= limit)
    };
    let mut age_checked = Instant::now();
    let failure = loop {
        // Answers to other requests may keep coming while one never does.
        if age_checked.elapsed() >= AGE_CHECK_INTERVAL {
            age_checked = Instant::now();
            take_sent(&mut waiting);
            if overdue(&waiting) {
                break ClientError::TimedOut;
            }
        }
        match split_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT * 16) {
            Ok(Some(frame)) if frame.len() >= 4 => {
                let received = Instant::now();
                let correlation_id = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
                take_sent(&mut waiting);
                let Some(Sent { expect, token, .. }) = waiting.remove(&correlation_id) else {
                    break ClientError::Unexpected;
                };
                let response = W::decode(expect, frame.slice(4..));
                let _ = answers.send(Answer {
                    token,
                    response,
                    received,
                });
                let mut state = slots.state.lock().expect("not poisoned");
                state.0 -= 1;
                slots.freed.notify_all();
                continue;
            }
            Ok(Some(_)) => break ClientError::Unexpected,
            Err(error) => break error.into(),
            Ok(None) => {}
        }
        let filled = buffer.len();
        buffer.resize(filled + 256 * 1024, 0);
        match stream.read(&mut buffer[filled..]) {
            Ok(0) => {
                break ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the broker closed the connection",
                ));
            }
            Ok(read) => buffer.truncate(filled + read),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                buffer.truncate(filled);
                take_sent(&mut waiting);
                if overdue(&waiting) {
                    break ClientError::TimedOut;
                }
            }
            Err(error) => break error.into(),
        }
    };
    // Everything still waiting fails with the reason; later sends fail at once, and the
    // broker sees the connection close.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let mut state = slots.state.lock().expect("not poisoned");
    state.1 = true;
    // Under the lock `send` registers with: no request is registered after this.
    take_sent(&mut waiting);
    slots.freed.notify_all();
    drop(state);
    let reason = failure.to_string();
    for (_, Sent { token, .. }) in waiting {
        let _ = answers.send(Answer {
            token,
            response: Err(ClientError::Io(std::io::Error::other(reason.clone()))),
            received: Instant::now(),
        });
    }
}
