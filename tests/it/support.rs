//! Helpers shared by the integration tests.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use spate::record::{BatchBuilder, HeaderRef};

/// Runs `make()` to completion on a fresh glommio executor thread.
pub fn run<Make, Fut, T>(make: Make) -> T
where
    Make: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(make)
        .expect("start executor")
        .join()
        .expect("executor thread")
}

/// A batch of `count` records; record `i` has value `{tag}-{i}` padded to `value_bytes`.
pub fn batch(tag: &str, count: usize, value_bytes: usize, timestamp: i64) -> Bytes {
    let mut builder = BatchBuilder::new();
    for index in 0..count {
        let mut value = format!("{tag}-{index}").into_bytes();
        value.resize(value_bytes.max(value.len()), b'.');
        let key = format!("key-{}", index % 7);
        builder.push(
            timestamp + index as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[HeaderRef {
                key: b"tag",
                value: Some(tag.as_bytes()),
            }],
        );
    }
    builder.build(0)
}

pub fn batch_mut(tag: &str, count: usize, value_bytes: usize, timestamp: i64) -> BytesMut {
    BytesMut::from(&batch(tag, count, value_bytes, timestamp)[..])
}

/// Decodes every record in `bytes` (concatenated batches) into (offset, value) pairs.
pub fn records(bytes: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for batch in spate::record::split_batches(bytes) {
        let (_, range) = batch.expect("valid batches");
        let batch = Bytes::copy_from_slice(&bytes[range]);
        for record in spate::record::decode_records(&batch).expect("records") {
            out.push((record.offset, record.value.expect("value").to_vec()));
        }
    }
    out
}

/// Every record from `from` to the log end, read in pieces (a read stops at a segment end).
pub async fn read_all(log: &spate::storage::Log, from: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < log.log_end_offset() {
        let outcome = log.read(offset, 1 << 20).await.expect("read");
        let got = records(&outcome.to_vec());
        offset = got.last().expect("a read below the end returns data").0 + 1;
        out.extend(got);
    }
    out
}
