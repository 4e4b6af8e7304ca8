//! Producer ids for Kafka's idempotent producers (InitProducerId), unique for the life of
//! the data directory.
//!
//! Ids are handed out from blocks: `<data dir>/producer-ids` holds the end of the last
//! block reserved (a checksummed little-endian `i64`), replaced atomically and durably
//! before any id of the block is given out. A restart starts at that end, so an id is
//! never given twice, whatever the crash; the unused rest of a block is skipped.

use std::path::{Path, PathBuf};

use crate::limits::PRODUCER_ID_BLOCK;

const MAGIC: &[u8; 8] = b"SPATEPID";
const FILE_BYTES: usize = 8 + 8 + 4;

pub fn producer_ids_path(data_dir: &Path) -> PathBuf {
    data_dir.join("producer-ids")
}

/// The first id not yet reserved: 0 for a new data directory.
pub fn load(data_dir: &Path) -> Result<i64, String> {
    let path = producer_ids_path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    };
    decode(&bytes).ok_or_else(|| {
        format!(
            "{} is damaged (bad magic, length or checksum): restore it, or remove it only if no idempotent Kafka producer will write to this broker again",
            path.display()
        )
    })
}

fn decode(bytes: &[u8]) -> Option<i64> {
    if bytes.len() != FILE_BYTES || &bytes[..8] != MAGIC {
        return None;
    }
    let value: [u8; 8] = bytes[8..16].try_into().ok()?;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    (crc32c::crc32c(&bytes[..16]) == crc)
        .then(|| i64::from_le_bytes(value))
        .filter(|end| *end >= 0)
}

fn encode(end: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FILE_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&end.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Records that ids below `end` may be given out: written to a temporary file, synced,
/// renamed over the old one, and the directory synced. Blocking: run it off the reactor.
pub fn reserve(data_dir: &Path, end: i64) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = data_dir.join("producer-ids.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(&encode(end))?;
    file.sync_all()?;
    std::fs::rename(&temporary, producer_ids_path(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The ids of the block being handed out (`next..end`), kept by shard 0.
#[derive(Debug)]
pub struct ProducerIds {
    pub next: i64,
    pub end: i64,
}

impl ProducerIds {
    /// Nothing reserved yet: the first request reserves a block starting at `start`.
    pub fn starting_at(start: i64) -> ProducerIds {
        ProducerIds {
            next: start,
            end: start,
        }
    }

    /// The next id, if the block has one left.
    pub fn take(&mut self) -> Option<i64> {
        (self.next < self.end).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// The end of the block after this one.
    pub fn next_block_end(&self) -> i64 {
        self.end.saturating_add(PRODUCER_ID_BLOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_blocks_survive_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), 0);
        let mut ids = ProducerIds::starting_at(load(dir.path()).unwrap());
        assert_eq!(
            ids.take(),
            None,
            "nothing is given before a block is reserved"
        );
        let end = ids.next_block_end();
        reserve(dir.path(), end).unwrap();
        ids.end = end;
        assert_eq!((ids.take(), ids.take()), (Some(0), Some(1)));
        // A restart starts after the whole reserved block.
        assert_eq!(load(dir.path()).unwrap(), PRODUCER_ID_BLOCK);
        let mut bytes = std::fs::read(producer_ids_path(dir.path())).unwrap();
        bytes[9] ^= 1;
        std::fs::write(producer_ids_path(dir.path()), &bytes).unwrap();
        assert!(load(dir.path()).unwrap_err().contains("damaged"));
    }
}
