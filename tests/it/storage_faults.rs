//! Faults: real ones on a real filesystem (a full disk, and files that cannot be deleted
//! with `chattr +i`, on a small ext4 image mounted on a loop device; these need root, as
//! CI and the development machines have; elsewhere set SPATE_SKIP_ROOT_TESTS=1), and
//! failed fdatasyncs, which no filesystem fails on demand, injected through
//! `storage::faults` (no root needed).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use spate::storage::{Log, LogConfig, StorageError, faults};

use crate::support::{batch_mut, fill, in_temp_dir, on_loop_mount, read_all};

#[test]
fn a_full_disk_fails_appends_cleanly_and_the_log_recovers_when_space_returns() {
    on_loop_mount(|root| async move {
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
}

/// Marks `path` immutable (or not): unlinking it then fails with EPERM.
/// The same with groups of several chunks (concurrent appends of 100 KB: groups over
/// `WRITE_CHUNK_BYTES`, sent as several writes): once the disk fills, a group whose later
/// chunks find no space fails whole, and what its earlier chunks wrote is never adopted.
#[test]
fn a_full_disk_fails_multi_chunk_groups_whole_and_nothing_unacknowledged_is_adopted() {
    on_loop_mount(|root| async move {
        let path = root.join("p");
        let config = LogConfig {
            segment_bytes: 8 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        let round = |log: &Log, tag: String| {
            let tasks: Vec<_> = (0..16)
                .map(|lane| {
                    let log = log.clone();
                    let tag = format!("{tag}-{lane}");
                    glommio::spawn_local(
                        async move { log.append(batch_mut(&tag, 1, 100_000, 0)).await },
                    )
                })
                .collect();
            async move {
                let mut outcomes = Vec::new();
                for task in tasks {
                    outcomes.push(task.await);
                }
                outcomes
            }
        };
        for outcome in round(&log, "before".into()).await {
            outcome.unwrap();
        }
        assert!(log.stats().chunk_writes > log.stats().group_writes);

        let filler = root.join("filler");
        fill(&filler);
        let mut failures = 0;
        for index in 0..20 {
            for outcome in round(&log, format!("full{index}")).await {
                if let Err(error) = outcome {
                    assert!(matches!(error, StorageError::DiskFull { .. }), "{error}");
                    failures += 1;
                }
            }
            if failures > 0 {
                break;
            }
        }
        assert!(failures > 0, "appends on a full disk must fail");
        let acknowledged = read_all(&log, 0).await;
        assert_eq!(acknowledged.len() as i64, log.log_end_offset());

        std::fs::remove_file(&filler).unwrap();
        let after = log.append(batch_mut("after", 1, 10, 0)).await.unwrap();
        assert_eq!(after.base_offset, acknowledged.len() as i64, "no gap");
        let everything = read_all(&log, 0).await;
        log.close().await.unwrap();
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(
            read_all(&log, 0).await,
            everything,
            "nothing more, nothing less"
        );
        log.close().await.unwrap();
    });
}

fn immutable(path: &Path, on: bool) {
    let flag = if on { "+i" } else { "-i" };
    let status = Command::new("chattr")
        .arg(flag)
        .arg(path)
        .status()
        .expect("chattr (e2fsprogs)");
    assert!(status.success(), "chattr {flag} {}", path.display());
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: spate::limits::SEGMENT_BYTES_MIN,
        ..LogConfig::default()
    }
}

#[test]
fn a_truncation_that_cannot_delete_a_segment_stops_writes_and_loses_nothing() {
    on_loop_mount(|root| async move {
        let path = root.join("p");
        let log = Log::open(&path, small_segments()).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("t{index}"), 5, 1000, 0))
                .await
                .unwrap();
        }
        let before = read_all(&log, 0).await;
        let newest = log.segments().last().unwrap().path.clone();
        immutable(&newest, true);

        let error = log.truncate(7).await.unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error}");
        // Memory moved ahead of the disk: writes are refused, reads still answer.
        let refused = log.append(batch_mut("after", 1, 10, 0)).await.unwrap_err();
        assert!(
            matches!(refused, StorageError::LogFailed { .. }),
            "{refused}"
        );
        assert!(refused.to_string().contains("reopen"), "{refused}");
        assert_eq!(read_all(&log, 0).await.len(), 5);
        assert!(log.close().await.is_err(), "close reports the failure");

        immutable(&newest, false);
        // Newest-first deletion failed at the first file: the disk still holds the whole
        // log, contiguous, and reopening recovers it.
        let log = Log::open(&path, small_segments()).await.unwrap();
        assert_eq!(read_all(&log, 0).await, before);
        assert_eq!(log.truncate(7).await.unwrap(), 5);
        assert_eq!(
            log.append(batch_mut("after", 1, 10, 0))
                .await
                .unwrap()
                .base_offset,
            5
        );
        log.close().await.unwrap();
    });
}

#[test]
fn retention_that_cannot_delete_a_segment_keeps_the_log_start() {
    on_loop_mount(|root| async move {
        let path = root.join("p");
        let config = LogConfig {
            retention_ms: Some(1_000),
            ..small_segments()
        };
        let log = Log::open(&path, config).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("r{index}"), 5, 1000, 10_000))
                .await
                .unwrap();
        }
        let segments = log.segments();
        immutable(&segments[0].path, true);

        let error = log.enforce_retention(1_000_000).await.unwrap_err();
        assert!(matches!(error, StorageError::Io { .. }), "{error}");
        assert_eq!(
            log.log_start_offset(),
            0,
            "nothing was deleted, the start stays"
        );
        assert_eq!(read_all(&log, 0).await.len(), 200);

        immutable(&segments[0].path, false);
        let report = log.enforce_retention(1_000_000).await.unwrap();
        assert_eq!(report.deleted_segments.first(), Some(&0));
        assert!(!segments[0].path.exists());
        assert_eq!(log.log_start_offset(), report.log_start_offset);
        log.close().await.unwrap();
    });
}

fn assert_log_failed(error: &StorageError) {
    assert!(matches!(error, StorageError::LogFailed { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("fdatasync"), "names the cause: {message}");
    assert!(message.contains("restart the broker"), "{message}");
}

#[test]
fn a_failed_interval_flush_is_not_retried_and_stops_acknowledging_appends() {
    in_temp_dir(|path| async move {
        let config = LogConfig {
            flush_ms: 100,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        faults::fail_next_fdatasync_under(&path);
        for index in 0..5 {
            log.append(batch_mut(&format!("a{index}"), 2, 100, 1_000))
                .await
                .expect("acknowledged once written, before the interval flush");
        }
        let acknowledged = read_all(&log, 0).await;
        // Wait on the fault, not a clock: the appender's own timer runs the flush.
        for _ in 0..3000 {
            if faults::injected_fdatasync_failures() > 0 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            faults::injected_fdatasync_failures(),
            1,
            "the interval flush ran"
        );

        // A retry could succeed although the kernel dropped the data: nothing more is
        // acknowledged, and nothing is synced and reported durable.
        let refused = log
            .append(batch_mut("after", 1, 10, 2_000))
            .await
            .expect_err("no append is acknowledged after a failed fdatasync");
        assert_log_failed(&refused);
        assert_log_failed(&log.flush().await.unwrap_err());
        assert_eq!(log.stats().fdatasyncs, 0);
        assert_eq!(read_all(&log, 0).await, acknowledged, "reads go on");
        assert_log_failed(&log.close().await.unwrap_err());

        faults::clear();
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(read_all(&log, 0).await, acknowledged);
        let next = log.append(batch_mut("again", 1, 10, 3_000)).await.unwrap();
        assert_eq!(next.base_offset, 10);
        log.close().await.unwrap();
    });
}

#[test]
fn an_append_whose_fdatasync_fails_is_refused_and_so_is_every_later_one() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        for index in 0..3 {
            log.append(batch_mut(&format!("b{index}"), 3, 200, 1_000))
                .await
                .unwrap();
        }
        let acknowledged = read_all(&log, 0).await;
        let end = log.log_end_offset();

        // One failed fdatasync only: the next one (discarding the unacknowledged bytes)
        // succeeds, and must not make the log writable again.
        faults::fail_next_fdatasync_under(&path);
        let failed = log
            .append(batch_mut("lost", 3, 200, 2_000))
            .await
            .expect_err("an append whose fdatasync failed is not acknowledged");
        assert_log_failed(&failed);
        assert_eq!(faults::injected_fdatasync_failures(), 1);
        for index in 0..3 {
            let refused = log
                .append(batch_mut(&format!("later{index}"), 1, 10, 3_000))
                .await
                .expect_err("every later append is refused");
            assert_log_failed(&refused);
        }
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(read_all(&log, 0).await, acknowledged, "reads go on");
        assert!(log.close().await.is_err(), "close reports the failure");

        faults::clear();
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(
            read_all(&log, 0).await,
            acknowledged,
            "exactly the acknowledged batches"
        );
        let next = log.append(batch_mut("again", 1, 10, 4_000)).await.unwrap();
        assert_eq!(next.base_offset, end);
        log.close().await.unwrap();
    });
}

/// Appends to many logs on one executor share durability rounds (one `syncfs` for many
/// partitions); a sync failure armed for one partition fails that partition's append and
/// its log, and no other.
#[test]
fn partitions_share_durability_rounds_and_a_failure_stays_with_its_partition() {
    in_temp_dir(|root| async move {
        let mut logs = Vec::new();
        for partition in 0..20 {
            let path = root.join(format!("p{partition}"));
            logs.push((
                path.clone(),
                Log::open(&path, LogConfig::default()).await.unwrap(),
            ));
        }
        faults::fail_next_fdatasync_under(&logs[7].0);
        let (rounds_before, syncfs_before) = spate::storage::round_counts();
        let appends: Vec<_> = logs
            .iter()
            .enumerate()
            .map(|(partition, (_, log))| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    log.append(batch_mut(&format!("r{partition}"), 2, 100, 1_000))
                        .await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for append in appends {
            outcomes.push(append.await);
        }
        let (rounds_after, syncfs_after) = spate::storage::round_counts();
        for (partition, outcome) in outcomes.iter().enumerate() {
            if partition == 7 {
                assert_log_failed(outcome.as_ref().expect_err("its sync failed"));
            } else {
                assert_eq!(outcome.as_ref().unwrap().base_offset, 0, "p{partition}");
            }
        }
        assert_eq!(faults::injected_fdatasync_failures(), 1);
        assert!(
            rounds_after - rounds_before < 20,
            "20 syncs in {} rounds",
            rounds_after - rounds_before
        );
        assert!(
            syncfs_after > syncfs_before,
            "a round covered several partitions"
        );
        for (partition, (_, log)) in logs.into_iter().enumerate() {
            if partition == 7 {
                assert!(log.close().await.is_err());
            } else {
                assert_eq!(read_all(&log, 0).await.len(), 2);
                log.close().await.unwrap();
            }
        }
    });
}
