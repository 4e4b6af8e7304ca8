//! One client connection: a reader that splits frames and starts a handler per request
//! (up to the in-flight limit), and a writer that sends answers as they complete.

use std::rc::Rc;

use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::handlers::{self, Outgoing};
use super::shard::{FetchPayload, Shard};
use crate::protocol::{Piece, decode_request_header, split_frame};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub(crate) async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|address| address.to_string())
        .unwrap_or_default();
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let in_flight_max = shard.config.in_flight_max_per_connection;
    let (answers, pending) = local_channel::new_bounded::<Outgoing>(in_flight_max);
    let writer_task = glommio::spawn_local(async move {
        while let Some(outgoing) = pending.recv().await {
            let written = match outgoing {
                Outgoing::Frame(frame) => writer.write_all(&frame).await,
                Outgoing::Pieces(pieces) => write_pieces(&mut writer, pieces).await,
            };
            if written.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    });
    let in_flight = Rc::new(Semaphore::new(in_flight_max as u64));
    let answers = Rc::new(answers);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    'connection: loop {
        loop {
            let frame = match split_frame(&mut buffer, shard.config.frame_bytes_max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing the connection: unusable frame");
                    break 'connection;
                }
            };
            let (header, body) = match decode_request_header(frame) {
                Ok(parts) => parts,
                Err(error) => {
                    tracing::warn!(%peer, %error, "closing the connection: truncated request header");
                    break 'connection;
                }
            };
            // Stop reading while too many requests of this connection are in flight.
            let Ok(permit) = in_flight.clone().acquire_static_permit(1).await else {
                break 'connection;
            };
            let shard = shard.clone();
            let answers = answers.clone();
            glommio::spawn_local(async move {
                if let Some(outgoing) = handlers::handle(shard, header, body).await {
                    let _ = answers.send(outgoing).await;
                }
                drop(permit);
            })
            .detach();
        }
        let filled = buffer.len();
        buffer.resize(filled + READ_CHUNK_BYTES, 0);
        match reader.read(&mut buffer[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(read) => buffer.truncate(filled + read),
        }
    }
    // Let the answers already started go out, then close.
    let _ = in_flight.acquire(in_flight_max as u64).await;
    drop(answers);
    writer_task.await;
}

async fn write_pieces<W: futures_lite::AsyncWrite + Unpin>(
    writer: &mut W,
    pieces: Vec<Piece<FetchPayload>>,
) -> std::io::Result<()> {
    for piece in pieces {
        match piece {
            Piece::Encoded(bytes) => writer.write_all(&bytes).await?,
            Piece::Payload(FetchPayload::Remote(bytes)) => writer.write_all(&bytes).await?,
            // Straight from the tail cache or the disk read buffer: no copy.
            Piece::Payload(FetchPayload::Local(chunks)) => {
                for chunk in chunks {
                    writer.write_all(&chunk).await?;
                }
            }
        }
    }
    Ok(())
}
