//! The Raft log and state machine of the cluster metadata, on disk (issue 14).
//!
//! Files in the store's directory:
//! - `log`: the Raft log, appended to: records of `u32` length, `u32` CRC-32C of the
//!   payload (both little-endian), then the payload: one entry as JSON. An append is
//!   fsync'd before openraft is told it is durable. Opening reads records up to the first
//!   torn or damaged one and cuts the file there (an append that had not completed was
//!   never reported durable). A truncation or a purge rewrites the file (temporary file,
//!   fsync, rename, directory fsync): the metadata log is small and purged behind
//!   snapshots.
//! - `vote`, `purged`: the last vote and the last purged log id, as JSON, replaced
//!   atomically the same way.
//! - `snapshot`: the last snapshot (its meta and the state machine's state), replaced
//!   atomically; the state machine starts from it, and openraft applies the committed
//!   entries after it again.
//!
//! The store runs on the cluster's own thread (a tokio current-thread runtime, never a
//! data shard), so its file I/O is plain blocking `std::fs`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership, Vote,
};
use serde::{Serialize, de::DeserializeOwned};

use super::ClusterState;
use super::{CommandReply, NodeId, TypeConfig};

type Error = StorageError<NodeId>;

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, error: std::io::Error) -> Error {
    StorageError::from_io_error(subject, verb, error)
}

fn corrupt(subject: ErrorSubject<NodeId>, what: String) -> Error {
    io_error(
        subject,
        ErrorVerb::Read,
        std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    )
}

/// Writes `value` as JSON to `dir/name` atomically: temporary file, fsync, rename,
/// directory fsync.
fn replace_json(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    replace_file(dir, name, |file| file.write_all(&bytes))
}

fn replace_file(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    write(&mut file)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()
}

fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

const RECORD_HEADER_BYTES: usize = 8;

fn encode_record(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// The whole records of `bytes`, and where the first torn or damaged one starts.
fn decode_records(bytes: &[u8]) -> (Vec<Entry<TypeConfig>>, usize) {
    let mut entries = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= RECORD_HEADER_BYTES {
        let length = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + RECORD_HEADER_BYTES;
        let Some(payload) = bytes.get(start..start + length) else {
            break;
        };
        if crc32c::crc32c(payload) != crc {
            break;
        }
        let Ok(entry) = serde_json::from_slice(payload) else {
            break;
        };
        entries.push(entry);
        at = start + length;
    }
    (entries, at)
}

struct LogInner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    vote: Option<Vote<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

impl LogInner {
    /// Rewrites the log file with the entries in memory.
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for entry in self.entries.values() {
            encode_record(entry, &mut bytes)?;
        }
        replace_file(&self.dir, "log", |file| file.write_all(&bytes))?;
        self.file = OpenOptions::new().append(true).open(self.dir.join("log"))?;
        Ok(())
    }
}

/// The Raft log; clones share it (openraft reads through one while appending through
/// another).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    /// Opens (creating) the log in `dir`, cutting a torn last record.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (entries, valid) = decode_records(&bytes);
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                cut = bytes.len() - valid,
                "cutting a torn record off the end of the Raft log"
            );
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        let vote = read_json(&dir.join("vote"))?;
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join("purged"))?.flatten();
        let entries = entries
            .into_iter()
            .filter(|entry| Some(entry.log_id.index) > last_purged.map(|purged| purged.index))
            .map(|entry| (entry.log_id.index, entry))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogInner {
                dir: dir.to_path_buf(),
                file,
                entries,
                vote,
                last_purged,
            })),
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, Error> {
        let inner = self.inner.lock().expect("not poisoned");
        Ok(inner
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, Error> {
        let inner = self.inner.lock().expect("not poisoned");
        let last_log_id = inner
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id)
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().expect("not poisoned");
        replace_json(&inner.dir, "vote", vote)
            .map_err(|error| io_error(ErrorSubject::Vote, ErrorVerb::Write, error))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, Error> {
        Ok(self.inner.lock().expect("not poisoned").vote)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        for entry in &entries {
            encode_record(entry, &mut bytes)
                .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Write, error))?;
        }
        let mut inner = self.inner.lock().expect("not poisoned");
        let written = inner
            .file
            .write_all(&bytes)
            .and_then(|()| inner.file.sync_data());
        if let Err(error) = written {
            let message = error.to_string();
            callback.log_io_completed(Err(error));
            return Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other(message),
            ));
        }
        for entry in entries {
            inner.entries.insert(entry.log_id.index, entry);
        }
        drop(inner);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().expect("not poisoned");
        inner.entries.split_off(&log_id.index);
        inner
            .rewrite()
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, error))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), Error> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let delete = |error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, error);
        // Durable first: entries at or below it are never read again, even if the rewrite
        // below is lost.
        replace_json(&inner.dir, "purged", &Some(log_id)).map_err(delete)?;
        inner.last_purged = Some(log_id);
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.rewrite().map_err(delete)
    }
}

/// What the state machine holds, and what a snapshot carries.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct MachineState {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub cluster: ClusterState,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    /// The state, as JSON (what travels to a follower that needs it).
    data: Vec<u8>,
}

struct MachineInner {
    dir: PathBuf,
    state: MachineState,
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built so far (their ids must differ).
    built: u64,
}

/// The cluster metadata as a Raft state machine; clones share it.
#[derive(Clone)]
pub struct MetadataMachine {
    inner: Arc<Mutex<MachineInner>>,
}

impl MetadataMachine {
    /// Opens the state machine in `dir`: its state as of the last entry applied (file
    /// `state`, replaced after every apply), else its last snapshot's.
    pub fn open(dir: &Path) -> std::io::Result<MetadataMachine> {
        std::fs::create_dir_all(dir)?;
        let snapshot: Option<StoredSnapshot> = read_json(&dir.join("snapshot"))?;
        let applied: Option<MachineState> = read_json(&dir.join("state"))?;
        let state = match (applied, &snapshot) {
            (Some(state), _) => state,
            (None, Some(snapshot)) => serde_json::from_slice(&snapshot.data).map_err(|error| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("snapshot state: {error}"),
                )
            })?,
            (None, None) => MachineState::default(),
        };
        Ok(MetadataMachine {
            inner: Arc::new(Mutex::new(MachineInner {
                dir: dir.to_path_buf(),
                state,
                snapshot,
                built: 0,
            })),
        })
    }

    /// The cluster as of the last applied entry.
    pub fn state(&self) -> ClusterState {
        self.inner
            .lock()
            .expect("not poisoned")
            .state
            .cluster
            .clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetadataMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, Error> {
        let mut inner = self.inner.lock().expect("not poisoned");
        let write = |error| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, error);
        let data = serde_json::to_vec(&inner.state).map_err(|error| write(error.into()))?;
        inner.built += 1;
        let last = inner.state.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: inner.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map_or(0, |id| id.leader_id.term),
                last.map_or(0, |id| id.index),
                inner.built
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        replace_json(&inner.dir, "snapshot", &stored).map_err(write)?;
        inner.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetadataMachine {
    type SnapshotBuilder = MetadataMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<
        (
            Option<LogId<NodeId>>,
            StoredMembership<NodeId, openraft::BasicNode>,
        ),
        Error,
    > {
        let inner = self.inner.lock().expect("not poisoned");
        Ok((inner.state.last_applied, inner.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandReply>, Error>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut replies = Vec::new();
        for entry in entries {
            inner.state.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => CommandReply::Done,
                EntryPayload::Normal(command) => inner.state.cluster.apply_command(command),
                EntryPayload::Membership(membership) => {
                    inner.state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    CommandReply::Done
                }
            };
            replies.push(reply);
        }
        // Durable before openraft counts the entries applied: a restarted node starts
        // from this state (its shards open the partitions it places here) and is not
        // given these entries again.
        replace_json(&inner.dir, "state", &inner.state)
            .map_err(|error| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, error))?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, Error> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), Error> {
        let data = snapshot.into_inner();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let state: MachineState = serde_json::from_slice(&data)
            .map_err(|error| corrupt(subject.clone(), format!("snapshot state: {error}")))?;
        let mut inner = self.inner.lock().expect("not poisoned");
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        replace_json(&inner.dir, "snapshot", &stored)
            .map_err(|error| io_error(subject, ErrorVerb::Write, error))?;
        inner.state = MachineState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            ..state
        };
        replace_json(&inner.dir, "state", &inner.state)
            .map_err(|error| io_error(ErrorSubject::StateMachine, ErrorVerb::Write, error))?;
        inner.snapshot = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, Error> {
        let inner = self.inner.lock().expect("not poisoned");
        Ok(inner.snapshot.as_ref().map(|stored| Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, MetadataMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, MetadataMachine), Error> {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let opened = LogStore::open(&dir.path().join("raft"))
                .and_then(|log| Ok((log, MetadataMachine::open(&dir.path().join("raft"))?)));
            let (log, machine) =
                opened.map_err(|error| io_error(ErrorSubject::Store, ErrorVerb::Read, error))?;
            Ok((dir, log, machine))
        }
    }

    /// openraft's own conformance suite for log stores and state machines.
    #[test]
    fn the_store_passes_openrafts_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }

    use crate::cluster::Command;
    use futures_lite::future::block_on;
    use openraft::storage::RaftLogStorageExt;
    use openraft::testing::log_id;

    fn create(name: &str, partitions: u32) -> Command {
        Command::CreateTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            configs: vec![("flush.ms".into(), "100".into())],
        }
    }

    fn delete(name: &str) -> Command {
        Command::DeleteTopic { name: name.into() }
    }

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn indexes(log: &mut LogStore) -> Vec<u64> {
        block_on(log.try_get_log_entries(..))
            .unwrap()
            .iter()
            .map(|entry| entry.log_id.index)
            .collect()
    }

    #[test]
    fn the_log_vote_and_purge_survive_a_reopen_and_a_torn_record_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let mut log = LogStore::open(&path).unwrap();
        let entries = (1..=6).map(|index| entry(index, delete(&format!("t{index}"))));
        block_on(log.blocking_append(entries)).unwrap();
        block_on(log.save_vote(&Vote::new(3, 2))).unwrap();
        block_on(log.truncate(log_id(1, 1, 5))).unwrap();
        block_on(log.purge(log_id(1, 1, 2))).unwrap();
        assert_eq!(indexes(&mut log), [3, 4]);
        drop(log);

        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&mut log), [3, 4]);
        assert_eq!(block_on(log.read_vote()).unwrap(), Some(Vote::new(3, 2)));
        let state = block_on(log.get_log_state()).unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 4)));
        drop(log);

        // An append cut short by a crash: its record is torn, the ones before it whole.
        let mut file = OpenOptions::new()
            .append(true)
            .open(path.join("log"))
            .unwrap();
        let mut torn = Vec::new();
        encode_record(&entry(5, delete("t5")), &mut torn).unwrap();
        file.write_all(&torn[..torn.len() - 3]).unwrap();
        drop(file);
        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&mut log), [3, 4]);
        block_on(log.blocking_append([entry(5, delete("t6"))])).unwrap();
        drop(log);
        assert_eq!(indexes(&mut LogStore::open(&path).unwrap()), [3, 4, 5]);
    }

    #[test]
    fn commands_change_the_state_and_a_snapshot_brings_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let mut machine = MetadataMachine::open(&path).unwrap();
        let register = Command::RegisterBroker {
            id: 1,
            info: crate::cluster::state::BrokerInfo {
                address: "127.0.0.1:7070".into(),
                ..Default::default()
            },
        };
        let replies = block_on(machine.apply([
            entry(1, register),
            entry(2, create("orders", 3)),
            entry(3, create("clicks", 1)),
            entry(
                4,
                Command::AddPartitions {
                    name: "orders".into(),
                    count: 6,
                },
            ),
            entry(
                5,
                Command::AddPartitions {
                    name: "orders".into(),
                    count: 4,
                },
            ),
            entry(6, create("clicks", 2)),
            entry(7, delete("clicks")),
        ]))
        .unwrap();
        let done = CommandReply::Done;
        assert_eq!(
            replies[..4],
            [done.clone(), done.clone(), done.clone(), done.clone()]
        );
        assert!(
            matches!(replies[4], CommandReply::Refused(_)),
            "fewer partitions are refused"
        );
        assert_eq!(
            replies[5],
            CommandReply::TopicExists,
            "a taken name is refused"
        );
        assert_eq!(replies[6], done);
        let state = machine.state();
        assert_eq!(state.topics.keys().collect::<Vec<_>>(), ["orders"]);
        assert_eq!(state.topics["orders"].partitions.len(), 6);

        let mut builder = block_on(machine.get_snapshot_builder());
        let snapshot = block_on(builder.build_snapshot()).unwrap();
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 7)));
        drop(machine);

        let mut reopened = MetadataMachine::open(&path).unwrap();
        assert_eq!(reopened.state(), state);
        let (applied, _) = block_on(reopened.applied_state()).unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 7)));
        let current = block_on(reopened.get_current_snapshot()).unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);

        // A follower installs it and holds the same state.
        let follower_dir = tempfile::tempdir().unwrap();
        let mut follower = MetadataMachine::open(follower_dir.path()).unwrap();
        block_on(follower.install_snapshot(&current.meta, current.snapshot)).unwrap();
        assert_eq!(follower.state(), state);
    }
}
