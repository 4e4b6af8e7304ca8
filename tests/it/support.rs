//! Helpers shared by the integration tests.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs `make(path)` on a fresh executor, where `path` is a partition directory (not yet
/// created) inside a temporary directory that lives until the run ends.
pub fn in_temp_dir<Make, Fut, T>(make: Make) -> T
where
    Make: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("p");
    let result = run(move || make(path));
    drop(dir);
    result
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

/// Runs `make(root)` on a fresh executor, where `root` is the mount point of a fresh 24 MiB
/// ext4 image (unmounted afterwards); does nothing where mounting is not possible and
/// SPATE_SKIP_ROOT_TESTS is set.
pub fn on_loop_mount<Make, Fut>(make: Make)
where
    Make: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let Some(mount) = LoopMount::new(dir.path(), 24) else {
        return;
    };
    let root = mount.mount_point.clone();
    run(move || make(root));
    drop(mount);
}

/// A small ext4 filesystem on a loop device, unmounted on drop.
pub struct LoopMount {
    pub mount_point: PathBuf,
}

impl LoopMount {
    /// Formats a `size_mib` ext4 image under `dir` and mounts it; `None` when the machine
    /// cannot (not root) and the skip variable is set.
    pub fn new(dir: &Path, size_mib: u64) -> Option<LoopMount> {
        let image = dir.join("disk.img");
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        let ok =
            |command: &mut Command| command.output().is_ok_and(|output| output.status.success());
        let formatted = ok(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0"])
            .arg(&image));
        let mounted = formatted
            && ok(Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&image)
                .arg(&mount_point));
        if !mounted {
            if std::env::var_os("SPATE_SKIP_ROOT_TESTS").is_some() {
                eprintln!("skipped: mounting a loop device needs root");
                return None;
            }
            panic!(
                "could not mount an ext4 loop image (needs root and mkfs.ext4); set SPATE_SKIP_ROOT_TESTS=1 to skip"
            );
        }
        Some(LoopMount { mount_point })
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
pub fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    loop {
        if let Err(error) = file.write_all(&chunk).and_then(|_| file.sync_all()) {
            assert_eq!(
                error.raw_os_error(),
                Some(28),
                "expected ENOSPC, got {error}"
            );
            // Take the last blocks one at a time.
            let block = [0u8; 4096];
            while file.write_all(&block).and_then(|_| file.sync_all()).is_ok() {}
            return;
        }
    }
}

/// Appends (tag, value bytes) that overrun a log's 64 MiB pending-append budget so as to
/// test its admission order: eight of 7.5 MiB leave a little under 4 MiB free, then one of
/// 7 MiB must wait, and one of 1 MiB behind it would fit in what is free but came later.
pub fn budget_overrunning_appends() -> Vec<(String, usize)> {
    const MIB: usize = 1 << 20;
    let mut sizes: Vec<(String, usize)> = (0..8)
        .map(|index| (format!("fill{index}"), 7 * MIB + MIB / 2))
        .collect();
    sizes.push(("large".into(), 7 * MIB));
    sizes.push(("small".into(), MIB));
    sizes
}

/// Calls `ready` until it gives a value (every 20 ms, for at most `limit`).
pub fn wait_for<T>(limit: std::time::Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// A small xorshift generator for seeded, replayable test runs: the seed comes from the
/// environment variable `name` when set, else from the clock (printed by the caller so a
/// run can be replayed).
pub struct Random(pub u64);

impl Random {
    pub fn seeded_from(name: &str) -> Random {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Random(env_number(name, clock) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    /// An index below `bound`.
    pub fn index(&mut self, bound: usize) -> usize {
        self.below(bound as u64) as usize
    }
}
