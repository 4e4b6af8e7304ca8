//! The codecs of compressed batches (attributes bits 0-2): gzip, snappy, lz4 and zstd, as
//! Kafka's clients write them. A compressed batch is stored and served as it came; the
//! broker decompresses it only to check its records at append, and readers (Spate's own
//! client, `spate consume`) to decode them.
//!
//! Decompression is bounded: a batch whose records would take more than
//! `DECOMPRESSED_BATCH_BYTES_MAX` is refused before that much is allocated (a few
//! kilobytes of zstd can claim gigabytes).
//!
//! Codecs (well-kept crates, none written here): flate2 (gzip), snap (snappy: raw blocks
//! as librdkafka writes them, or the xerial framing of Kafka's Java client), lz4_flex
//! (the LZ4 frame format), zstd (libzstd).

use std::borrow::Cow;
use std::io::Read;

use super::{BatchError, BatchHeader, Compression};
use crate::limits::{BATCH_HEADER_BYTES, DECOMPRESSED_BATCH_BYTES_MAX};

/// The start of a snappy stream framed by xerial's snappy-java (Kafka's Java client).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
/// Magic, version and compatible version.
const XERIAL_HEADER_BYTES: usize = 16;

/// The records section of a whole batch: the bytes themselves when uncompressed, else
/// decompressed (at most `DECOMPRESSED_BATCH_BYTES_MAX`).
pub fn records_section<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Cow<'a, [u8]>, BatchError> {
    let section = &batch[BATCH_HEADER_BYTES..];
    match header.compression()? {
        Compression::None => Ok(Cow::Borrowed(section)),
        codec => decompress(codec, section, DECOMPRESSED_BATCH_BYTES_MAX).map(Cow::Owned),
    }
}

fn failed(codec: Compression, reason: impl std::fmt::Display) -> BatchError {
    BatchError::Decompression {
        codec,
        reason: reason.to_string(),
    }
}

/// Decompresses `input`, refusing output longer than `max` bytes.
pub fn decompress(codec: Compression, input: &[u8], max: usize) -> Result<Vec<u8>, BatchError> {
    let too_large = || BatchError::DecompressedTooLarge { codec, max };
    let read_bounded = |reader: &mut dyn Read| -> Result<Vec<u8>, BatchError> {
        let mut out = Vec::new();
        reader
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|error| failed(codec, error))?;
        if out.len() > max {
            return Err(too_large());
        }
        Ok(out)
    };
    match codec {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => read_bounded(&mut flate2::read::MultiGzDecoder::new(input)),
        Compression::Lz4 => read_bounded(&mut lz4_flex::frame::FrameDecoder::new(input)),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(input).map_err(|e| failed(codec, e))?;
            read_bounded(&mut decoder)
        }
        Compression::Snappy => {
            let mut out = Vec::new();
            if input.starts_with(XERIAL_MAGIC) {
                // Blocks of (i32 length, raw snappy block) after the header.
                let mut rest = input.get(XERIAL_HEADER_BYTES..).unwrap_or_default();
                while !rest.is_empty() {
                    let Some((length, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(failed(codec, "truncated xerial block length"));
                    };
                    let length = i32::from_be_bytes(*length);
                    let length = usize::try_from(length)
                        .ok()
                        .filter(|&length| length <= tail.len())
                        .ok_or_else(|| failed(codec, "xerial block longer than the batch"))?;
                    snappy_block(&tail[..length], &mut out, max)?;
                    rest = &tail[length..];
                }
            } else {
                snappy_block(input, &mut out, max)?;
            }
            Ok(out)
        }
    }
}

/// Appends one raw snappy block to `out`, checking its declared length first.
fn snappy_block(block: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let length = snap::raw::decompress_len(block).map_err(|error| failed(codec, error))?;
    if out.len() + length > max {
        return Err(BatchError::DecompressedTooLarge { codec, max });
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|error| failed(codec, error))?;
    out.truncate(start + written);
    Ok(())
}

/// Compresses `input` as Kafka's clients do (snappy as raw blocks, lz4 as a frame).
pub fn compress(codec: Compression, input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => input.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(input).expect("writing to memory");
            encoder.finish().expect("writing to memory")
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(input)
            .expect("snappy compresses any input"),
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(input).expect("writing to memory");
            encoder.finish().expect("writing to memory")
        }
        Compression::Zstd => zstd::bulk::compress(input, 3).expect("zstd compresses any input"),
    }
}
