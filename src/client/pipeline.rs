//! A connection that keeps many requests in flight: the way to drive a broker at speed
//! (the load generator's producers use it). `send` writes a request and returns at once,
//! blocking only while `max_in_flight` requests are unanswered; a reader thread decodes
//! each answer and hands it, with the caller's token, to the `answers` channel.

use std::collections::HashMap;
use std::io::Read;
use std::io::Write;
use std::net::TcpStream;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use bytes::BytesMut;

use super::{ClientError, Connection};
use crate::protocol::{ApiKey, FRAME_BYTES_MAX_DEFAULT, Request, Response, split_frame};

/// One answer: the token given to `send`, the response (or why there is none), and when
/// it arrived.
pub struct Answer<T> {
    pub token: T,
    pub response: Result<Response, ClientError>,
    pub received: Instant,
}

pub struct Pipeline<T: Send + 'static> {
    stream: TcpStream,
    next_correlation_id: u32,
    slots: Arc<Slots>,
    pending: mpsc::Sender<(u32, ApiKey, T)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

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
        let reading = stream.try_clone()?;
        // The reader waits as long as it must: answers pace themselves.
        reading.set_read_timeout(None)?;
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
                move || read_answers(reading, buffer, sent, answers, &slots)
            })?;
        Ok(Pipeline {
            stream,
            next_correlation_id,
            slots,
            pending,
            reader: Some(reader),
        })
    }

    /// Sends `request`; its answer comes to the channel with `token`. Blocks while the
    /// pipeline is full; fails once the connection has.
    pub fn send(&mut self, request: &Request, token: T) -> Result<(), ClientError> {
        {
            let mut state = self.slots.state.lock().expect("not poisoned");
            while state.0 >= self.slots.max && !state.1 {
                state = self.slots.freed.wait(state).expect("not poisoned");
            }
            if state.1 {
                return Err(closed());
            }
            state.0 += 1;
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.pending
            .send((correlation_id, request.api_key(), token))
            .map_err(|_| closed())?;
        self.stream.write_all(&request.encode(correlation_id))?;
        Ok(())
    }

    /// Sends a request that gets no answer (a produce with acks=0).
    pub fn send_unanswered(&mut self, request: &Request) -> Result<(), ClientError> {
        if self.slots.state.lock().expect("not poisoned").1 {
            return Err(closed());
        }
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        self.stream.write_all(&request.encode(correlation_id))?;
        Ok(())
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.slots.state.lock().expect("not poisoned").0
    }

    /// Waits until every request sent has been answered (or the connection failed).
    pub fn drain(&self) {
        let mut state = self.slots.state.lock().expect("not poisoned");
        while state.0 > 0 && !state.1 {
            state = self.slots.freed.wait(state).expect("not poisoned");
        }
    }
}

impl<T: Send + 'static> Drop for Pipeline<T> {
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

fn read_answers<T>(
    mut stream: TcpStream,
    mut buffer: BytesMut,
    sent: mpsc::Receiver<(u32, ApiKey, T)>,
    answers: mpsc::Sender<Answer<T>>,
    slots: &Slots,
) {
    let mut waiting: HashMap<u32, (ApiKey, T)> = HashMap::new();
    let failure = loop {
        match split_frame(&mut buffer, FRAME_BYTES_MAX_DEFAULT * 16) {
            Ok(Some(frame)) if frame.len() >= 4 => {
                let received = Instant::now();
                let correlation_id = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes"));
                while let Ok((id, api_key, token)) = sent.try_recv() {
                    waiting.insert(id, (api_key, token));
                }
                let Some((api_key, token)) = waiting.remove(&correlation_id) else {
                    break ClientError::Unexpected;
                };
                let response = Response::decode(api_key, frame.slice(4..)).map_err(Into::into);
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
            Err(error) => break error.into(),
        }
    };
    // Everything still waiting fails with the reason; later sends fail at once.
    let mut state = slots.state.lock().expect("not poisoned");
    state.1 = true;
    slots.freed.notify_all();
    drop(state);
    while let Ok((id, api_key, token)) = sent.try_recv() {
        waiting.insert(id, (api_key, token));
    }
    let reason = failure.to_string();
    for (_, (_, token)) in waiting {
        let _ = answers.send(Answer {
            token,
            response: Err(ClientError::Io(std::io::Error::other(reason.clone()))),
            received: Instant::now(),
        });
    }
}
