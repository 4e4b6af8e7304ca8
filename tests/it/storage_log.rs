use spate::storage::{Log, LogConfig, StorageError, faults};

use crate::support::{
    batch, batch_mut, budget_overrunning_appends, in_temp_dir, read_all, records, run,
};

#[test]
fn append_then_read_back_from_cache_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p0");
    run(move || async move {
        let config = LogConfig {
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config).await.unwrap();
        let first = log.append(batch_mut("a", 3, 100, 1000)).await.unwrap();
        let second = log.append(batch_mut("b", 2, 100, 2000)).await.unwrap();
        assert_eq!((first.base_offset, first.last_offset), (0, 2));
        assert_eq!((second.base_offset, second.last_offset), (3, 4));
        assert_eq!(log.log_end_offset(), 5);

        let read = log.read(0, 1 << 20).await.unwrap();
        let got = records(&read.to_vec());
        assert_eq!(got.len(), 5);
        assert_eq!(got[3].0, 3);
        assert!(got[3].1.starts_with(b"b-0"));

        let middle = log.read(4, 1).await.unwrap();
        assert_eq!(
            records(&middle.to_vec()).first().unwrap().0,
            3,
            "whole batch holding 4"
        );
        assert!(log.read(5, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(6, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        log.close().await.unwrap();

        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.log_end_offset(), 5);
        let got = records(&log.read(0, 1 << 20).await.unwrap().to_vec());
        assert_eq!(got.len(), 5);
        let next = log.append(batch_mut("c", 1, 10, 3000)).await.unwrap();
        assert_eq!(next.base_offset, 5);
        log.close().await.unwrap();
    });
}

fn small(config: LogConfig) -> LogConfig {
    LogConfig {
        segment_bytes: spate::limits::SEGMENT_BYTES_MIN,
        index_interval_bytes: 512,
        ..config
    }
}

#[test]
fn group_commit_coalesces_concurrent_appends_into_few_fdatasyncs() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let tasks: Vec<_> = (0..64)
            .map(|lane| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    let mut offsets = Vec::new();
                    for round in 0..4 {
                        let tag = format!("lane{lane}-round{round}");
                        offsets.push(log.append(batch_mut(&tag, 2, 100, 0)).await.unwrap());
                    }
                    offsets
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await);
        }
        all.sort_by_key(|info| info.base_offset);
        for (index, info) in all.iter().enumerate() {
            assert_eq!(
                info.base_offset,
                index as i64 * 2,
                "offsets unique and contiguous"
            );
            assert_eq!(info.last_offset, info.base_offset + 1);
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 256);
        // flush.ms=0: every acknowledged append was covered by an fdatasync, and appends
        // that waited together shared one write and one fdatasync.
        assert_eq!(stats.fdatasyncs, stats.group_writes);
        assert!(stats.group_writes < 256 / 4, "{stats:?}");
        assert_eq!(read_all(&log, 0).await.len(), 512);
        log.close().await.unwrap();
    });
}

#[test]
fn a_group_larger_than_a_write_chunk_goes_out_in_chunks_and_reads_back_whole() {
    in_temp_dir(|path| async move {
        let config = LogConfig {
            tail_cache_bytes: 0,
            flush_ms: 100,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        // A partial last block first: every group rewrites it ahead of its own bytes.
        log.append(batch_mut("head", 1, 100, 0)).await.unwrap();
        let tasks: Vec<_> = (0..48)
            .map(|lane| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    log.append(batch_mut(&format!("lane{lane}-"), 3, 33_333, 0))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 49);
        assert!(
            stats.chunk_writes > stats.group_writes,
            "some group went out in several chunks: {stats:?}"
        );
        // Every value as written, each once, at offsets 0, 1, 2...
        let mut expected: std::collections::HashSet<Vec<u8>> = (0..48)
            .flat_map(|lane| records(&batch(&format!("lane{lane}-"), 3, 33_333, 0)).into_iter())
            .map(|(_, value)| value)
            .collect();
        expected.extend(
            records(&batch("head", 1, 100, 0))
                .into_iter()
                .map(|(_, value)| value),
        );
        let check = |got: Vec<(i64, Vec<u8>)>| {
            assert_eq!(got.len(), expected.len());
            let mut seen = std::collections::HashSet::new();
            for (index, (offset, value)) in got.into_iter().enumerate() {
                assert_eq!(offset, index as i64);
                assert!(
                    expected.contains(&value),
                    "offset {offset} holds bytes never written"
                );
                assert!(seen.insert(value), "offset {offset} repeats a value");
            }
        };
        check(read_all(&log, 0).await);
        log.close().await.unwrap();
        let log = Log::open(&path, config).await.unwrap();
        check(read_all(&log, 0).await);
        log.close().await.unwrap();
    });
}

#[test]
fn interval_flush_acknowledges_before_syncing_and_syncs_within_flush_ms() {
    in_temp_dir(|path| async move {
        let config = LogConfig {
            flush_ms: 50,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config).await.unwrap();
        for index in 0..10 {
            log.append(batch_mut(&format!("x{index}"), 1, 100, 0))
                .await
                .unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 10);
        assert_eq!(
            stats.fdatasyncs, 0,
            "acknowledged without waiting for fdatasync"
        );
        // Wait on the log itself, not a clock: the appender flushes on its own timer.
        for _ in 0..200 {
            if log.stats().fdatasyncs > 0 {
                break;
            }
            glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            log.stats().fdatasyncs,
            1,
            "one interval flush covers all ten appends"
        );
        log.close().await.unwrap();

        let config = LogConfig {
            flush_ms: 60_000,
            flush_bytes: Some(1000),
            ..LogConfig::default()
        };
        let log = Log::open(&path, config).await.unwrap();
        log.append(batch_mut("small", 1, 100, 0)).await.unwrap();
        assert_eq!(log.stats().fdatasyncs, 0);
        log.append(batch_mut("big", 1, 2000, 0)).await.unwrap();
        assert_eq!(log.stats().fdatasyncs, 1, "flush.bytes forces a sync");
        log.close().await.unwrap();
    });
}

#[test]
fn bad_batches_are_rejected_and_the_log_is_unchanged() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        log.append(batch_mut("good", 3, 10, 0)).await.unwrap();
        let before = (log.log_end_offset(), log.size_bytes());

        let mut bad_crc = batch_mut("bad", 2, 10, 0);
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        let mut wrong_length = batch_mut("bad", 2, 10, 0);
        wrong_length[8..12].copy_from_slice(&1_000i32.to_be_bytes());
        let mut wrong_count = batch_mut("bad", 2, 10, 0);
        wrong_count[57..61].copy_from_slice(&3i32.to_be_bytes());
        let mut good_then_torn = batch_mut("ok", 1, 10, 0);
        good_then_torn.extend_from_slice(&batch_mut("torn", 1, 10, 0)[..30]);
        let empty = bytes::BytesMut::new();
        let cases = [
            ("crc", bad_crc),
            ("length", wrong_length),
            ("count", wrong_count),
            ("torn second batch", good_then_torn),
            ("empty", empty),
        ];
        for (name, records) in cases {
            let error = log.append(records).await.unwrap_err();
            assert!(
                matches!(error, StorageError::InvalidBatch(_)),
                "{name}: {error}"
            );
            assert_eq!((log.log_end_offset(), log.size_bytes()), before, "{name}");
        }
        let too_big = bytes::BytesMut::zeroed(spate::limits::BATCH_BYTES_MAX + 1);
        let error = log.append(too_big).await.unwrap_err();
        assert!(
            matches!(error, StorageError::RecordTooLarge { .. }),
            "{error}"
        );
        assert_eq!(
            log.append(batch_mut("after", 1, 10, 0))
                .await
                .unwrap()
                .base_offset,
            3
        );
        log.close().await.unwrap();
        assert!(matches!(
            log.append(batch_mut("closed", 1, 1, 0)).await,
            Err(StorageError::Closed)
        ));
    });
}

#[test]
fn rolls_by_size_and_by_time_and_reads_across_segments() {
    in_temp_dir(|path| async move {
        let config = small(LogConfig {
            segment_ms: 60_000,
            ..LogConfig::default()
        });
        let log = Log::open(&path, config.clone()).await.unwrap();
        for index in 0..30 {
            log.append(batch_mut(&format!("s{index}"), 4, 1000, 1_000))
                .await
                .unwrap();
        }
        let segments = log.segments();
        assert!(segments.len() >= 2, "{segments:?}");
        for pair in segments.windows(2) {
            assert!(pair[0].sealed && pair[0].size_bytes <= config.segment_bytes);
            assert_eq!(pair[0].next_offset, pair[1].base_offset);
        }
        let before = log.segments().len();
        // A batch more than segment.ms newer than the active segment's first rolls it.
        log.append(batch_mut("late", 1, 10, 1_003 + 60_001))
            .await
            .unwrap();
        assert_eq!(log.segments().len(), before + 1);
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 121);
        for (index, (offset, _)) in all.iter().enumerate() {
            assert_eq!(*offset, index as i64);
        }
        log.close().await.unwrap();
    });
}

#[test]
fn retention_deletes_exactly_the_expired_segments_and_reads_below_start_fail() {
    in_temp_dir(|path| async move {
        let config = small(LogConfig {
            retention_ms: Some(10_000),
            ..LogConfig::default()
        });
        let log = Log::open(&path, config).await.unwrap();
        // Three generations of data, 10 s apart (record timestamps drive retention).
        for generation in 0..3i64 {
            for index in 0..14 {
                let timestamp = 100_000 + generation * 10_000 + index;
                log.append(batch_mut("r", 4, 1000, timestamp))
                    .await
                    .unwrap();
            }
            log.roll().await.unwrap();
        }
        let segments = log.segments();
        let now = 100_000 + 2 * 10_000 + 5_000; // generation 0 and 1 are > 10 s old at most partly
        let cutoff = now - 10_000;
        let expected: Vec<i64> = segments
            .iter()
            .take_while(|segment| segment.sealed && segment.max_timestamp < cutoff)
            .map(|segment| segment.base_offset)
            .collect();
        assert!(
            !expected.is_empty() && expected.len() < segments.len() - 1,
            "{segments:?}"
        );
        let report = log.enforce_retention(now).await.unwrap();
        assert_eq!(report.deleted_segments, expected);
        let start = log.log_start_offset();
        assert_eq!(start, segments[expected.len()].base_offset);
        assert_eq!(report.log_start_offset, start);
        for segment in &segments[..expected.len()] {
            assert!(!segment.path.exists(), "{} deleted", segment.path.display());
            assert!(!segment.path.with_extension("index").exists());
        }
        let error = log.read(start - 1, 100).await.unwrap_err();
        assert!(
            matches!(error, StorageError::OffsetOutOfRange { log_start, .. } if log_start == start)
        );
        assert_eq!(read_all(&log, start).await.first().unwrap().0, start);

        // Nothing more is expired now; a second pass deletes nothing.
        assert!(
            log.enforce_retention(now)
                .await
                .unwrap()
                .deleted_segments
                .is_empty()
        );
        log.close().await.unwrap();
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(
            log.log_start_offset(),
            start,
            "the log start survives a restart"
        );
        // Far in the future everything has expired; the active segment is rolled too.
        let end = log.log_end_offset();
        log.close().await.unwrap();
        let log = Log::open(
            &path,
            small(LogConfig {
                retention_ms: Some(10_000),
                ..LogConfig::default()
            }),
        )
        .await
        .unwrap();
        log.enforce_retention(10_000_000).await.unwrap();
        assert_eq!(log.log_start_offset(), end);
        assert!(log.read(end, 100).await.unwrap().chunks.is_empty());
        assert_eq!(
            log.append(batch_mut("new", 1, 1, 0))
                .await
                .unwrap()
                .base_offset,
            end
        );
        log.close().await.unwrap();
    });
}

#[test]
fn retention_by_size_keeps_at_least_retention_bytes() {
    in_temp_dir(|path| async move {
        let config = small(LogConfig {
            retention_bytes: Some(150_000),
            retention_ms: None,
            ..LogConfig::default()
        });
        let log = Log::open(&path, config).await.unwrap();
        for _ in 0..80 {
            log.append(batch_mut("z", 4, 1000, 0)).await.unwrap();
        }
        let total = log.size_bytes();
        let segments = log.segments();
        let report = log.enforce_retention(0).await.unwrap();
        assert!(!report.deleted_segments.is_empty());
        let kept = log.size_bytes();
        assert_eq!(kept, total - report.deleted_bytes);
        assert!(kept >= 150_000, "kept {kept}");
        let next_victim = segments[report.deleted_segments.len()].size_bytes;
        assert!(
            kept - next_victim < 150_000,
            "one more deletion would go below the limit"
        );
        log.close().await.unwrap();
    });
}

#[test]
fn truncate_removes_the_batch_holding_the_offset_and_everything_after() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("t{index}"), 5, 1000, index))
                .await
                .unwrap();
        }
        let segments_before = log.segments().len();
        assert_eq!(
            log.truncate(1_000).await.unwrap(),
            200,
            "past the end: no-op"
        );
        assert_eq!(log.truncate(52).await.unwrap(), 50);
        assert_eq!(log.log_end_offset(), 50);
        assert!(log.segments().len() < segments_before);
        assert!(log.segments().iter().all(|segment| segment.path.exists()));
        assert!(matches!(log.read(50, 10).await, Ok(outcome) if outcome.chunks.is_empty()));
        assert!(log.read(51, 10).await.is_err());
        assert_eq!(
            log.append(batch_mut("after", 1, 10, 0))
                .await
                .unwrap()
                .base_offset,
            50
        );
        log.close().await.unwrap();
        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 51);
        assert!(all[50].1.starts_with(b"after-0"));
        log.close().await.unwrap();
    });
}

#[test]
fn offset_for_timestamp_finds_the_first_record_at_or_after() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        // Batch i holds timestamps 1000*i .. 1000*i+4 (one record each ms).
        for index in 0..40i64 {
            log.append(batch_mut("ts", 5, 900, 1000 * index))
                .await
                .unwrap();
        }
        assert_eq!(log.offset_for_timestamp(-5).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(0).await.unwrap(), Some(0));
        assert_eq!(log.offset_for_timestamp(2).await.unwrap(), Some(2));
        assert_eq!(
            log.offset_for_timestamp(5).await.unwrap(),
            Some(5),
            "next batch"
        );
        assert_eq!(log.offset_for_timestamp(17_003).await.unwrap(), Some(88));
        assert_eq!(log.offset_for_timestamp(39_004).await.unwrap(), Some(199));
        assert_eq!(log.offset_for_timestamp(39_005).await.unwrap(), None);
        log.close().await.unwrap();
    });
}

#[test]
fn waiting_readers_wake_when_data_arrives() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let reader = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.wait_for_data(0).await;
                log.read(0, 1 << 20).await.unwrap().to_vec()
            })
        };
        glommio::yield_if_needed().await;
        log.append(batch_mut("wake", 1, 10, 0)).await.unwrap();
        let got = records(&reader.await);
        assert_eq!(got.len(), 1);
        log.close().await.unwrap();
    });
}

#[test]
fn interval_flush_runs_even_when_appends_never_stop() {
    in_temp_dir(|path| async move {
        let config = LogConfig {
            flush_ms: 5,
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config).await.unwrap();
        // 24 appenders of 1 MiB keep more waiting than one group write takes (16 MiB), so
        // the appender's queue is never empty.
        let appended = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let tasks: Vec<_> = (0..24)
            .map(|_| {
                let log = log.clone();
                let appended = appended.clone();
                glommio::spawn_local(async move {
                    let batch = batch_mut("load", 1000, 1000, 0);
                    while appended.get() < 400 && log.stats().fdatasyncs < 3 {
                        log.append(batch.clone()).await.unwrap();
                        appended.set(appended.get() + 1);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        let stats = log.stats();
        assert!(
            stats.fdatasyncs >= 3,
            "flush.ms=5 must sync while busy: {stats:?} after {} appends",
            appended.get()
        );
        log.close().await.unwrap();
    });
}

/// A reader going through the log from disk in order gets every record once, in order,
/// with its reads served from bytes read ahead; a truncation between two reads throws the
/// read ahead away instead of serving what it cut.
#[test]
fn sequential_disk_reads_are_read_ahead_and_a_truncation_discards_the_read_ahead() {
    in_temp_dir(|path| async move {
        let config = LogConfig {
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let log = Log::open(&path, config.clone()).await.unwrap();
        for index in 0..200 {
            log.append(batch_mut(&format!("s{index}"), 4, 2000, index))
                .await
                .unwrap();
        }
        let mut offset = 0;
        let mut seen = Vec::new();
        while offset < 400 {
            let read = log.read(offset, 64 * 1024).await.unwrap();
            for (record_offset, value) in records(&read.to_vec()) {
                if record_offset >= offset {
                    seen.push((record_offset, value));
                }
            }
            offset = seen.last().unwrap().0 + 1;
        }
        assert!(
            log.stats().read_ahead_hits > 0,
            "sequential reads used the read ahead"
        );
        // Cut where the next read was read ahead, and write something else there.
        let cut = offset;
        assert_eq!(log.truncate(cut).await.unwrap(), cut);
        log.append(batch_mut("new", 4, 2000, 0)).await.unwrap();
        let after = records(&log.read(cut, 64 * 1024).await.unwrap().to_vec());
        assert!(after[0].1.starts_with(b"new-0"), "not the bytes read ahead");
        loop {
            let read = log.read(offset, 64 * 1024).await.unwrap();
            let batch = records(&read.to_vec());
            if batch.is_empty() {
                break;
            }
            for (record_offset, value) in batch {
                if record_offset >= offset {
                    seen.push((record_offset, value));
                }
            }
            offset = seen.last().unwrap().0 + 1;
        }
        assert_eq!(seen.len() as i64, cut + 4);
        for (index, (record_offset, value)) in seen.iter().enumerate() {
            assert_eq!(*record_offset, index as i64);
            let tag = if (index as i64) < cut {
                format!("s{}-{}", index / 4, index % 4)
            } else {
                format!("new-{}", index % 4)
            };
            assert!(value.starts_with(tag.as_bytes()), "{index}");
        }
        log.close().await.unwrap();
    });
}

/// The value tag `batch_mut(&format!("d{i}"), 4, ..)` gives the record at `offset` when
/// every batch holds 4 records.
fn four_per_batch_value(offset: i64) -> String {
    format!("d{}-{}", offset / 4, offset % 4)
}

fn assert_records_from(all: &[(i64, Vec<u8>)], from: i64, end: i64) {
    assert_eq!(all.len() as i64, end - from, "every record from {from}");
    for (index, (offset, value)) in all.iter().enumerate() {
        assert_eq!(*offset, from + index as i64);
        assert!(
            value.starts_with(four_per_batch_value(*offset).as_bytes()),
            "offset {offset}"
        );
    }
}

/// Waits (up to 2 s: glommio closes files asynchronously) until this process holds no
/// descriptor of `path`.
async fn wait_until_closed(path: &std::path::Path) {
    let open = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .any(|target| {
                target
                    .to_string_lossy()
                    .starts_with(&*path.to_string_lossy())
            })
    };
    for _ in 0..200 {
        if !open() {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} is still open", path.display());
}

#[test]
fn delete_before_removes_only_the_segments_wholly_below_the_offset() {
    in_temp_dir(|path| async move {
        // No tail cache: every read goes to disk, and sequential ones start read aheads.
        let config = small(LogConfig {
            tail_cache_bytes: 0,
            ..LogConfig::default()
        });
        let log = Log::open(&path, config.clone()).await.unwrap();
        for index in 0..60 {
            log.append(batch_mut(&format!("d{index}"), 4, 1000, index))
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        let end = log.log_end_offset();
        assert_eq!(end, 240);
        let segments = log.segments();
        assert!(segments.len() >= 4, "{segments:?}");
        assert_records_from(&read_all(&log, 0).await, 0, end);
        // A sequential reader halfway through the first segment: a read ahead of it is
        // under way when it is deleted, and must not keep its file open.
        let mut next = 0;
        while next < segments[0].next_offset / 2 {
            let read = log.read(next, 8 * 1024).await.unwrap();
            next = records(&read.to_vec()).last().unwrap().0 + 1;
        }
        assert!(log.stats().read_ahead_hits > 0, "{:?}", log.stats());

        // Inside the third segment, in the middle of a batch: the first two go, the third
        // (which holds records below the offset) stays.
        let keep = &segments[2];
        let offset = keep.base_offset + 5;
        assert!(offset < keep.next_offset, "{segments:?}");
        let start = log.delete_before(offset).await.unwrap();
        assert_eq!(start, keep.base_offset);
        assert_eq!(log.log_start_offset(), start);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.segments(), segments[2..].to_vec());
        for segment in &segments[..2] {
            assert!(!segment.path.exists(), "{} deleted", segment.path.display());
            assert!(!segment.path.with_extension("index").exists());
            assert!(!segment.path.with_extension("timeindex").exists());
        }
        for segment in &segments[..2] {
            wait_until_closed(&segment.path).await;
        }
        for below in [0, start - 1] {
            let error = log.read(below, 100).await.unwrap_err();
            assert!(
                matches!(error, StorageError::OffsetOutOfRange { log_start, log_end, .. }
                    if log_start == start && log_end == end),
                "{below}: {error}"
            );
        }
        let holding = records(&log.read(offset, 1).await.unwrap().to_vec());
        assert_eq!(holding.first().unwrap().0, offset - offset % 4, "its batch");
        assert_records_from(&read_all(&log, start).await, start, end);

        // Again, or below the start: nothing more goes.
        assert_eq!(log.delete_before(offset).await.unwrap(), start);
        assert_eq!(log.delete_before(0).await.unwrap(), start);
        assert_eq!(log.segments(), segments[2..].to_vec());
        log.close().await.unwrap();

        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(
            log.log_start_offset(),
            start,
            "the log start survives a reopen"
        );
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.segments().len(), segments.len() - 2);
        assert!(matches!(
            log.read(start - 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_records_from(&read_all(&log, start).await, start, end);
        log.close().await.unwrap();
    });
}

#[test]
fn delete_before_the_log_end_keeps_only_the_active_segment_and_appends_continue() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("d{index}"), 4, 1000, index))
                .await
                .unwrap();
        }
        let end = log.log_end_offset();
        // Without a roll the active segment, which holds the last records, stays.
        let active = log.segments().last().unwrap().clone();
        assert!(active.base_offset < end && !active.sealed);
        assert_eq!(log.delete_before(end).await.unwrap(), active.base_offset);
        assert_eq!(log.segments(), vec![active.clone()]);
        assert_records_from(
            &read_all(&log, active.base_offset).await,
            active.base_offset,
            end,
        );

        log.roll().await.unwrap();
        assert_eq!(log.delete_before(end).await.unwrap(), end);
        assert_eq!(log.log_start_offset(), end);
        assert_eq!(log.log_end_offset(), end);
        let segments = log.segments();
        assert_eq!(segments.len(), 1, "{segments:?}");
        assert_eq!(
            (
                segments[0].base_offset,
                segments[0].size_bytes,
                segments[0].sealed
            ),
            (end, 0, false)
        );
        assert!(!active.path.exists());
        assert!(log.read(end, 100).await.unwrap().chunks.is_empty());
        assert!(matches!(
            log.read(end - 1, 100).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));

        let next = log.append(batch_mut("d1000", 4, 1000, 0)).await.unwrap();
        assert_eq!((next.base_offset, next.last_offset), (end, end + 3));
        let got = read_all(&log, end).await;
        assert_eq!(got.len(), 4);
        assert!(got[0].1.starts_with(b"d1000-0"));
        log.close().await.unwrap();

        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        assert_eq!(
            (log.log_start_offset(), log.log_end_offset()),
            (end, end + 4)
        );
        assert_eq!(read_all(&log, end).await, got);
        log.close().await.unwrap();
    });
}

#[test]
fn delete_before_past_the_log_end_is_refused_and_changes_nothing() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, small(LogConfig::default())).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("d{index}"), 4, 1000, index))
                .await
                .unwrap();
        }
        log.roll().await.unwrap();
        let end = log.log_end_offset();
        let segments = log.segments();
        assert!(segments.len() >= 3, "{segments:?}");
        let error = log.delete_before(end + 1).await.unwrap_err();
        assert!(
            matches!(error, StorageError::OffsetOutOfRange { offset, log_start: 0, log_end }
                if offset == end + 1 && log_end == end),
            "{error}"
        );
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.segments(), segments);
        assert!(segments.iter().all(|segment| segment.path.exists()));
        assert_records_from(&read_all(&log, 0).await, 0, end);
        // The log still takes appends and deletions.
        assert_eq!(
            log.append(batch_mut("d40", 4, 1000, 0))
                .await
                .unwrap()
                .base_offset,
            end
        );
        assert_eq!(
            log.delete_before(segments[1].base_offset).await.unwrap(),
            segments[1].base_offset
        );
        log.close().await.unwrap();
    });
}

#[test]
fn appends_waiting_for_the_pending_budget_enter_the_log_in_call_order() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        // The 1 MiB append would fit in what the 7 MiB one before it waits for.
        let sizes = budget_overrunning_appends();
        let started: Vec<_> = sizes
            .iter()
            .map(|(tag, bytes)| {
                let (log, records) = (log.clone(), batch_mut(tag, 1, *bytes, 0));
                glommio::spawn_local(async move { log.append(records).await.unwrap() })
            })
            .collect();
        let mut acknowledged = Vec::new();
        for task in started {
            acknowledged.push(task.await.base_offset);
        }
        assert_eq!(acknowledged, (0..10).collect::<Vec<i64>>());
        let tags: Vec<String> = read_all(&log, 0)
            .await
            .into_iter()
            .map(|(_, value)| {
                let value = String::from_utf8_lossy(&value[..16]).into_owned();
                value.split('-').next().unwrap().to_string()
            })
            .collect();
        let expected: Vec<String> = sizes.into_iter().map(|(tag, _)| tag).collect();
        assert_eq!(tags, expected);
        log.close().await.unwrap();
    });
}

#[test]
fn opening_a_log_makes_every_directory_it_created_durable() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().to_path_buf();
    run(move || async move {
        // Neither `a` nor `a/b` exists: their entries need syncs of their parents too, not
        // only `c`'s entry in `a/b`.
        let dir = root_path.join("a").join("b").join("c");
        faults::record_directory_syncs();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let synced = faults::take_directory_syncs();
        let expected = [
            root_path.clone(),
            root_path.join("a"),
            root_path.join("a").join("b"),
        ];
        assert!(
            synced.starts_with(&expected),
            "each new directory's parent is synced, top-down, first: {synced:?}"
        );
        log.close().await.unwrap();

        faults::record_directory_syncs();
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        let synced = faults::take_directory_syncs();
        assert!(
            expected.iter().all(|parent| !synced.contains(parent)),
            "nothing was created, no parent is synced: {synced:?}"
        );
        log.close().await.unwrap();
    });
}

/// A batch of `count` records at `timestamps` (one per record) with its max timestamp
/// forged to `max_timestamp` when given, and its CRC recomputed so that only the
/// timestamp is wrong.
fn timestamped_batch(timestamps: &[i64], max_timestamp: Option<i64>) -> bytes::BytesMut {
    let mut builder = spate::record::BatchBuilder::new();
    for (index, &timestamp) in timestamps.iter().enumerate() {
        builder.push(timestamp, None, Some(format!("t{index}").as_bytes()), &[]);
    }
    let mut batch = bytes::BytesMut::from(&builder.build(0)[..]);
    if let Some(max_timestamp) = max_timestamp {
        batch[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
        let crc = spate::record::compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    batch
}

#[test]
fn a_batch_whose_max_timestamp_is_not_its_records_is_refused() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let now = spate::clock::now_ms();
        log.append(timestamped_batch(&[now, now + 1], None))
            .await
            .unwrap();
        let before = (read_all(&log, 0).await, log.segments());

        // i64::MAX would keep the segment past any retention; a max below the records'
        // would make a lookup by time skip the batch.
        for forged in [i64::MAX, now - 60_000] {
            let error = log
                .append(timestamped_batch(&[now, now + 5, now + 2], Some(forged)))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    StorageError::InvalidBatch(spate::record::BatchError::MaxTimestampMismatch {
                        declared,
                        records,
                    }) if declared == forged && records == now + 5
                ),
                "{error}"
            );
            assert_eq!((read_all(&log, 0).await, log.segments()), before);
        }
        assert_eq!(log.offset_for_timestamp(now + 1).await.unwrap(), Some(1));
        log.close().await.unwrap();
    });
}

#[test]
fn record_timestamps_far_from_the_broker_clock_are_refused_by_the_topic_config() {
    in_temp_dir(|path| async move {
        const HOUR_MS: i64 = 60 * 60 * 1000;
        let now = spate::clock::now_ms();
        let in_two_hours = timestamped_batch(&[now, now + 2 * HOUR_MS], None);
        let two_days_old = timestamped_batch(&[now, now - 48 * HOUR_MS, now], None);

        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let error = log.append(in_two_hours.clone()).await.unwrap_err();
        assert!(
            matches!(error, StorageError::InvalidTimestamp { timestamp, .. } if timestamp == now + 2 * HOUR_MS),
            "{error}"
        );
        assert!(
            error.to_string().contains("message.timestamp.after.max.ms"),
            "says which config to change: {error}"
        );
        assert_eq!(
            spate::broker::storage_status(&error).code,
            spate::protocol::ErrorCode::InvalidTimestamp
        );
        assert_eq!(log.log_end_offset(), 0, "nothing appended");
        // No limit on old timestamps by default (Kafka's), nor on records without one.
        log.append(two_days_old.clone()).await.unwrap();
        log.append(timestamped_batch(&[-1, -1], None))
            .await
            .unwrap();
        log.close().await.unwrap();

        let config = LogConfig::from_pairs([
            ("message.timestamp.after.max.ms", "10800000"),
            ("message.timestamp.before.max.ms", "86400000"),
        ])
        .unwrap();
        let log = Log::open(&path, config).await.unwrap();
        let end = log.log_end_offset();
        let info = log.append(in_two_hours).await.unwrap();
        assert_eq!(info.base_offset, end, "accepted with after.max.ms raised");
        // Only the middle record is old: the records are walked, not just the max.
        let error = log.append(two_days_old).await.unwrap_err();
        assert!(
            matches!(error, StorageError::InvalidTimestamp { timestamp, .. } if timestamp == now - 48 * HOUR_MS),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("message.timestamp.before.max.ms"),
            "says which config to change: {error}"
        );
        log.append(timestamped_batch(&[now - HOUR_MS, -1], None))
            .await
            .unwrap();
        assert_eq!(log.log_end_offset(), end + 4);
        log.close().await.unwrap();
    });
}

/// The active segment is allocated ahead of its end (so that direct writes need no block
/// allocation), by a step that grows with the segment; the space ahead reads as zeros; a
/// clean close gives it back.
#[test]
fn the_active_segment_is_allocated_ahead_and_trimmed_at_close() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        log.append(batch_mut("first", 1, 100, 1_000)).await.unwrap();
        let file = log.segments()[0].path.clone();
        let length = || std::fs::metadata(&file).unwrap().len();
        let after_one = length();
        assert!(
            after_one >= 64 << 10,
            "64 KiB at least are allocated ahead: {after_one}"
        );
        for index in 0..200 {
            log.append(batch_mut(&format!("v{index}"), 10, 1000, 2_000 + index))
                .await
                .unwrap();
        }
        let size = log.segments()[0].size_bytes;
        assert!(size > after_one, "the appends outgrew the first allocation");
        // Each step is as much again as the segment holds: never more than that ahead.
        assert!(
            (size..=2 * size.next_multiple_of(4096) + (64 << 10)).contains(&length()),
            "{} bytes allocated for {size}",
            length()
        );
        let bytes = std::fs::read(&file).unwrap();
        assert!(bytes[size as usize..].iter().all(|&byte| byte == 0));
        log.close().await.unwrap();
        assert_eq!(length(), size.next_multiple_of(4096), "given back at close");
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.log_end_offset(), 1 + 200 * 10);
        log.close().await.unwrap();
    });
}

/// All the tail caches of a shard (an executor) stay within the shard's budget, the
/// oldest batches dropped first whichever partition holds them; reads of dropped batches
/// get the same bytes from disk.
#[test]
fn the_shard_budget_bounds_all_tail_caches_together() {
    in_temp_dir(|root| async move {
        const BUDGET: u64 = 1 << 20;
        spate::storage::set_shard_budget(Some(BUDGET));
        let mut logs = Vec::new();
        for partition in 0..30 {
            // Each partition's own bound (8 MiB by default) is far above its share.
            let log = Log::open(&root.join(format!("p{partition}")), LogConfig::default())
                .await
                .unwrap();
            logs.push(log);
        }
        let mut written = Vec::new();
        for round in 0..10 {
            for (partition, log) in logs.iter().enumerate() {
                let tag = format!("c{partition}-{round}");
                log.append(batch_mut(&tag, 4, 5_000, 1_000 + round))
                    .await
                    .unwrap();
                written.push((partition, tag));
                let usage = spate::storage::shard_usage();
                assert!(usage.bytes <= BUDGET, "{usage:?}");
            }
        }
        let usage = spate::storage::shard_usage();
        assert!(usage.evicted_batches > 0, "{usage:?}");
        assert!(
            usage.bytes > BUDGET / 2,
            "the newest batches stay cached: {usage:?}"
        );
        for (partition, log) in logs.iter().enumerate() {
            let values: Vec<Vec<u8>> = read_all(log, 0).await.into_iter().map(|r| r.1).collect();
            assert_eq!(values.len(), 40, "p{partition}");
            for (round, chunk) in values.chunks(4).enumerate() {
                let tag = format!("c{partition}-{round}-0");
                assert!(
                    chunk[0].starts_with(tag.as_bytes()),
                    "p{partition} round {round}"
                );
            }
        }
        for log in logs {
            log.close().await.unwrap();
        }
        assert_eq!(
            spate::storage::shard_usage().bytes,
            0,
            "closed logs hold nothing"
        );
    });
}

#[test]
fn segment_files_are_opened_when_used_and_closed_least_recently_used_first() {
    in_temp_dir(|path| async move {
        use spate::storage::{segment_files, set_segment_files_max};
        set_segment_files_max(3);
        let config = small(LogConfig {
            tail_cache_bytes: 0,
            ..LogConfig::default()
        });
        let log = Log::open(&path, config.clone()).await.unwrap();
        for index in 0..200 {
            log.append(batch_mut(&format!("s{index}"), 4, 1000, 1_000))
                .await
                .unwrap();
        }
        let sealed = log
            .segments()
            .iter()
            .filter(|segment| segment.sealed)
            .count();
        assert!(sealed >= 10, "{sealed} sealed segments");
        // Rolling leaves the shard no more than its cap of files open.
        assert!(segment_files().open <= 3, "{:?}", segment_files());
        let all = read_all(&log, 0).await;
        assert_eq!(all.len(), 800);
        for (index, (offset, _)) in all.iter().enumerate() {
            assert_eq!(*offset, index as i64);
        }
        let files = segment_files();
        assert!(files.open <= 3, "{files:?}");
        assert!(
            files.closed as usize >= sealed - 3,
            "reading every segment closed the least recently used: {files:?}"
        );
        // Reading them again reopens what was closed and finds the same bytes.
        assert_eq!(read_all(&log, 0).await, all);
        log.close().await.unwrap();
        assert_eq!(segment_files().open, 0, "a closed log holds no file");

        // A restart opens the active segment only: the sealed ones' index files vouch
        // for them until they are read.
        let opened = segment_files().opened;
        let log = Log::open(&path, config.clone()).await.unwrap();
        assert_eq!(segment_files().opened, opened + 1, "{:?}", segment_files());
        assert_eq!(read_all(&log, 0).await, all);
        assert!(segment_files().open <= 3);

        // Appends go on when other partitions' files push the active one out.
        let others: Vec<Log> = busy_neighbours(&path, &config).await;
        log.append(batch_mut("after", 4, 1000, 1_000))
            .await
            .unwrap();
        assert_eq!(read_all(&log, 796).await.len(), 8);
        for other in others {
            other.close().await.unwrap();
        }
        log.close().await.unwrap();
        let log = Log::open(&path, config).await.unwrap();
        assert_eq!(read_all(&log, 0).await.len(), 804);
        log.close().await.unwrap();
    });
}

/// Opens and writes four other logs beside `path`, each keeping its file open last.
async fn busy_neighbours(path: &std::path::Path, config: &LogConfig) -> Vec<Log> {
    let mut logs = Vec::new();
    for index in 0..4 {
        let other = Log::open(path.with_extension(format!("other{index}")), config.clone())
            .await
            .unwrap();
        other.append(batch_mut("o", 1, 10, 1_000)).await.unwrap();
        logs.push(other);
    }
    assert!(spate::storage::segment_files().open <= 3);
    logs
}

#[test]
fn read_ahead_keeps_to_the_shard_budget_and_reads_go_on_without_it() {
    in_temp_dir(|path| async move {
        use spate::storage::{set_read_ahead_budget, shard_usage};
        // Room for one 64 KiB read ahead at a time, across 8 partitions read in turns.
        set_read_ahead_budget(Some(64 * 1024));
        let config = LogConfig {
            tail_cache_bytes: 0,
            ..LogConfig::default()
        };
        let mut logs = Vec::new();
        for index in 0..8 {
            let log = Log::open(path.with_extension(format!("{index}")), config.clone())
                .await
                .unwrap();
            for batch in 0..40 {
                log.append(batch_mut(&format!("r{index}-{batch}"), 4, 2000, 0))
                    .await
                    .unwrap();
            }
            logs.push(log);
        }
        let mut offsets = [0i64; 8];
        let mut most_held = 0;
        while offsets.iter().any(|&offset| offset < 160) {
            for (log, offset) in logs.iter().zip(offsets.iter_mut()) {
                if *offset >= 160 {
                    continue;
                }
                let read = log.read(*offset, 64 * 1024).await.unwrap();
                let got = records(&read.to_vec());
                let first = got.iter().position(|(at, _)| *at == *offset).unwrap();
                for (at, value) in &got[first..] {
                    let index = logs
                        .iter()
                        .position(|other| other.dir() == log.dir())
                        .unwrap();
                    let tag = format!("r{index}-{}-{}", at / 4, at % 4);
                    assert!(value.starts_with(tag.as_bytes()), "{at}: the bytes written");
                }
                *offset = got.last().unwrap().0 + 1;
                most_held = most_held.max(shard_usage().read_ahead_bytes);
            }
        }
        let usage = shard_usage();
        assert!(
            most_held <= 64 * 1024,
            "{most_held} bytes read ahead at once"
        );
        assert!(usage.read_ahead_refused > 0, "{usage:?}");
        let hits: u64 = logs.iter().map(|log| log.stats().read_ahead_hits).sum();
        assert!(hits > 0, "some reads still used a read ahead");
        for log in logs {
            assert_eq!(read_all(&log, 0).await.len(), 160);
            log.close().await.unwrap();
        }
        assert_eq!(shard_usage().read_ahead_bytes, 0, "{:?}", shard_usage());
    });
}

/// A cluster leader's appends carry its epoch; a follower's keep the leader's offsets and
/// epochs, must start at the log end (else nothing is written), and read back as the
/// leader wrote them, also after a reopen.
#[test]
fn leader_appends_carry_their_epoch_and_replica_appends_keep_the_leaders_offsets() {
    use spate::record::{BatchHeader, set_base_offset, set_partition_leader_epoch};
    use spate::storage::AppendOrigin;
    in_temp_dir(|path| async move {
        let leader_dir = path.with_file_name("leader");
        let leader = Log::open(&leader_dir, LogConfig::default()).await.unwrap();
        let stamped = AppendOrigin::Client {
            leader_epoch: Some(4),
        };
        leader
            .append_as(batch_mut("a", 3, 10, 1000), stamped)
            .await
            .unwrap();
        leader
            .append_as(batch_mut("b", 2, 10, 2000), stamped)
            .await
            .unwrap();
        let copied = leader.read(0, 1 << 20).await.unwrap().to_vec();
        let mut position = 0;
        while position < copied.len() {
            let header = BatchHeader::parse(&copied[position..]).unwrap();
            assert_eq!(header.partition_leader_epoch, 4);
            position += header.total_bytes();
        }
        leader.close().await.unwrap();

        let follower = Log::open(&path, LogConfig::default()).await.unwrap();
        // Out of step with the log end (0): refused, nothing written.
        let mut ahead = batch_mut("x", 1, 10, 1000);
        set_base_offset(&mut ahead, 7);
        set_partition_leader_epoch(&mut ahead, 4);
        assert!(matches!(
            follower.append_as(ahead, AppendOrigin::Replica).await,
            Err(StorageError::ReplicaOffsetMismatch {
                expected: 0,
                found: 7
            })
        ));
        assert_eq!(follower.log_end_offset(), 0);
        let info = follower
            .append_as(bytes::BytesMut::from(&copied[..]), AppendOrigin::Replica)
            .await
            .unwrap();
        assert_eq!((info.base_offset, info.last_offset), (0, 4));
        follower.close().await.unwrap();
        let follower = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(follower.log_end_offset(), 5);
        assert_eq!(follower.read(0, 1 << 20).await.unwrap().to_vec(), copied);
        follower.close().await.unwrap();
    });
}
