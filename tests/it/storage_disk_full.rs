//! A full disk, for real: a small ext4 image mounted on a loop device. Needs root (CI and
//! the development machines run as root); elsewhere set SPATE_SKIP_ROOT_TESTS=1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use spate::storage::{Log, LogConfig, StorageError};

use crate::support::{batch_mut, read_all, run};

struct LoopMount {
    mount_point: PathBuf,
}

impl LoopMount {
    /// Formats a `size_mib` ext4 image under `dir` and mounts it; `None` when the machine
    /// cannot (not root) and the skip variable is set.
    fn new(dir: &Path, size_mib: u64) -> Option<LoopMount> {
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
fn fill(path: &Path) {
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

#[test]
fn a_full_disk_fails_appends_cleanly_and_the_log_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = LoopMount::new(dir.path(), 24) else {
        return;
    };
    let root = mount.mount_point.clone();
    run(move || async move {
        let path = root.join("p");
        let config = LogConfig {
            segment_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        for index in 0..20 {
            log.append(batch_mut(&format!("before{index}"), 8, 1000, 0))
                .await
                .unwrap();
        }
        let acknowledged = read_all(&log, 0).await;
        let end = log.log_end_offset();

        let filler = root.join("filler");
        fill(&filler);
        let mut failures = 0;
        for index in 0..40 {
            match log
                .append(batch_mut(&format!("full{index}"), 8, 1000, 0))
                .await
            {
                Ok(_) => {} // blocks freed by the filesystem may still take a little
                Err(error) => {
                    assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
                    assert!(error.to_string().contains("disk full"), "{error}");
                    failures += 1;
                }
            }
        }
        assert!(
            failures > 30,
            "appends on a full disk must fail: {failures} failed"
        );
        let end_when_full = log.log_end_offset();
        assert!(
            end_when_full - end < 80,
            "at most a few appends squeezed in"
        );
        assert_eq!(
            &read_all(&log, 0).await[..acknowledged.len()],
            &acknowledged[..]
        );

        std::fs::remove_file(&filler).unwrap();
        let after = log.append(batch_mut("after", 8, 1000, 0)).await.unwrap();
        assert_eq!(
            after.base_offset, end_when_full,
            "offsets continue with no gap"
        );
        let everything = read_all(&log, 0).await;
        log.close().await.unwrap();

        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(
            read_all(&log, 0).await,
            everything,
            "everything acknowledged survives reopen"
        );
        log.close().await.unwrap();
    });
    drop(mount);
}
