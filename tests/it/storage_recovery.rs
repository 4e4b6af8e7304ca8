//! Recovery: torn tails, flipped bytes, damaged indexes, inconsistent directories, and a
//! real `kill -9` of a process that is appending.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use spate::storage::{Log, LogConfig, StorageError};

use crate::support::{batch_mut, in_temp_dir, read_all, records, run};

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: spate::limits::SEGMENT_BYTES_MIN,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

/// Writes three batches and returns (segment path, start and end byte of the last batch,
/// its base offset, the file as closed).
fn three_batch_log(dir: PathBuf) -> (PathBuf, u64, u64, i64, Vec<u8>) {
    run(move || async move {
        let log = Log::open(&dir, LogConfig::default()).await.unwrap();
        log.append(batch_mut("a", 4, 50, 1_000)).await.unwrap();
        log.append(batch_mut("b", 2, 70, 2_000)).await.unwrap();
        let before = log.segments()[0].size_bytes;
        let last = log.append(batch_mut("c", 3, 40, 3_000)).await.unwrap();
        let segment = log.segments()[0].clone();
        log.close().await.unwrap();
        let bytes = std::fs::read(&segment.path).unwrap();
        (
            segment.path,
            before,
            segment.size_bytes,
            last.base_offset,
            bytes,
        )
    })
}

/// Puts `contents` in `dir` as the log's only segment, checks the recovered prefix with
/// `check_prefix`, and removes `dir`.
async fn check_variant(
    dir: &Path,
    file_name: &std::ffi::OsStr,
    contents: &[u8],
    expected_end: i64,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file_name), contents).unwrap();
    check_prefix(dir, expected_end).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// Reopens `dir` and checks the log holds exactly offsets `[0, expected_end)` with the
/// values written by `three_batch_log`, then that an append continues at `expected_end`
/// and survives another reopen.
async fn check_prefix(dir: &Path, expected_end: i64) {
    let log = Log::open(dir, LogConfig::default()).await.unwrap();
    assert_eq!(log.log_end_offset(), expected_end);
    let got = records(&log.read(0, 1 << 20).await.unwrap().to_vec());
    assert_eq!(got.len() as i64, expected_end);
    for (index, (offset, value)) in got.iter().enumerate() {
        assert_eq!(*offset, index as i64);
        let tag = [
            "a-0", "a-1", "a-2", "a-3", "b-0", "b-1", "c-0", "c-1", "c-2",
        ][index];
        assert!(value.starts_with(tag.as_bytes()), "offset {offset}");
    }
    let next = log.append(batch_mut("d", 1, 10, 4_000)).await.unwrap();
    assert_eq!(next.base_offset, expected_end);
    log.close().await.unwrap();
    let log = Log::open(dir, LogConfig::default()).await.unwrap();
    assert_eq!(log.log_end_offset(), expected_end + 1);
    let got = records(&log.read(expected_end, 1 << 20).await.unwrap().to_vec());
    assert!(got[0].1.starts_with(b"d-0"));
    log.close().await.unwrap();
}

#[test]
fn a_tail_cut_at_every_byte_of_the_last_batch_keeps_exactly_the_whole_batches() {
    let root = tempfile::tempdir().unwrap();
    let (path, start, end, last_base, bytes) = three_batch_log(root.path().join("original"));
    let file_name = path.file_name().unwrap().to_owned();
    let root_path = root.path().to_path_buf();
    run(move || async move {
        for cut in start..=end {
            let expected = if cut == end { last_base + 3 } else { last_base };
            let variant = root_path.join(format!("cut-{cut}"));
            check_variant(&variant, &file_name, &bytes[..cut as usize], expected).await;
        }
    });
}

#[test]
fn a_flipped_byte_in_the_last_batch_cuts_that_batch_only() {
    let root = tempfile::tempdir().unwrap();
    let (path, start, end, last_base, bytes) = three_batch_log(root.path().join("original"));
    let file_name = path.file_name().unwrap().to_owned();
    let root_path = root.path().to_path_buf();
    run(move || async move {
        for position in start..end {
            let mut damaged = bytes.clone();
            damaged[position as usize] ^= 0x5a;
            // Bytes 12..16 of a batch (partition leader epoch) are outside Kafka's CRC and
            // carry no offset: a flip there is invisible, as in Kafka. Every other byte is
            // covered by the CRC, the length/magic checks or offset continuity.
            let relative = position - start;
            let expected = if (12..16).contains(&relative) {
                last_base + 3
            } else {
                last_base
            };
            let variant = root_path.join(format!("flip-{position}"));
            check_variant(&variant, &file_name, &damaged, expected).await;
        }
    });
}

#[test]
fn garbage_after_the_last_batch_is_cut_and_zero_padding_is_not_damage() {
    let root = tempfile::tempdir().unwrap();
    let (path, _, end, last_base, bytes) = three_batch_log(root.path().join("original"));
    let file_name = path.file_name().unwrap().to_owned();
    let root_path = root.path().to_path_buf();
    run(move || async move {
        // Zeros to the end of the file are the appender's padding and the space it
        // allocates ahead (megabytes, after a crash): nothing is kept. Zeros followed by
        // anything else are a lost write in front of later data: the cut bytes are kept.
        assert!(end < 4096);
        for (padded_bytes, trailing, kept) in [
            (4096, None, false),
            (8192, None, false),
            (3 << 20, None, false),
            (8192, Some(8000), true),
            ((3 << 20) + 5, Some((3 << 20) + 4), true),
        ] {
            let dir = root_path.join(format!("padded-{padded_bytes}-{trailing:?}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut padded = bytes[..end as usize].to_vec();
            padded.resize(padded_bytes, 0);
            if let Some(position) = trailing {
                padded[position] = 7;
            }
            std::fs::write(dir.join(&file_name), &padded).unwrap();
            check_prefix(&dir, last_base + 3).await;
            let copy = dir.join(format!("{}.damaged-at-{end}", file_name.to_string_lossy()));
            assert_eq!(
                copy.exists(),
                kept,
                "{padded_bytes} bytes, non-zero at {trailing:?}"
            );
            // check_prefix appended a batch, closed and opened again: the space allocated
            // for the append was given back (the file ends at the block after the batch).
            let length = std::fs::metadata(dir.join(&file_name)).unwrap().len();
            assert!(
                length <= 4096,
                "{padded_bytes} bytes, non-zero at {trailing:?}"
            );
        }

        let dir = root_path.join("garbage");
        std::fs::create_dir_all(&dir).unwrap();
        let mut garbage = bytes[..end as usize].to_vec();
        // Past the first block: the cut file is shorter however the close pads it.
        garbage.extend((0..5000u32).map(|index| (index % 251) as u8 + 1));
        std::fs::write(dir.join(&file_name), &garbage).unwrap();
        check_prefix(&dir, last_base + 3).await;
        let length = std::fs::metadata(dir.join(&file_name)).unwrap().len();
        assert!(length < garbage.len() as u64, "the garbage was cut off");
    });
}

/// Builds a log with several sealed segments; returns their infos.
async fn multi_segment_log(dir: &Path) -> Vec<spate::storage::SegmentInfo> {
    let log = Log::open(dir, small_segments()).await.unwrap();
    for index in 0..40 {
        log.append(batch_mut(&format!("s{index}"), 5, 1000, 10_000 + index))
            .await
            .unwrap();
    }
    let segments = log.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    log.close().await.unwrap();
    segments
}

#[test]
fn missing_or_damaged_index_files_are_rebuilt() {
    in_temp_dir(|path| async move {
        let segments = multi_segment_log(&path).await;
        let first = &segments[0];
        let index = first.path.with_extension("index");
        let time_index = first.path.with_extension("timeindex");
        let original_index = std::fs::read(&index).unwrap();
        assert!(
            original_index.len() > 64,
            "sealed segments have index entries"
        );

        std::fs::remove_file(&index).unwrap();
        let mut damaged = std::fs::read(&time_index).unwrap();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 1;
        std::fs::write(&time_index, &damaged).unwrap();

        let log = Log::open(&path, small_segments()).await.unwrap();
        assert_eq!(log.segments(), segments);
        assert_eq!(
            std::fs::read(&index).unwrap(),
            original_index,
            "rebuilt identically"
        );
        for offset in [0, 7, 99, segments[1].base_offset, 199] {
            let got = records(&log.read(offset, 1).await.unwrap().to_vec());
            assert!(got.iter().any(|(at, _)| *at == offset), "offset {offset}");
        }
        log.close().await.unwrap();
    });
}

#[test]
fn a_directory_with_a_gap_or_an_overlap_is_refused_naming_the_file() {
    in_temp_dir(|path| async move {
        let segments = multi_segment_log(&path).await;
        let middle = &segments[1];
        let moved = path.join("moved-away");
        std::fs::rename(&middle.path, &moved).unwrap();
        let error = Log::open(&path, small_segments())
            .await
            .err()
            .expect("a gap is refused");
        assert!(
            matches!(error, StorageError::InconsistentLog { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("gap"), "{message}");
        assert!(
            message.contains(&format!("{:020}.log", segments[2].base_offset)),
            "{message}"
        );

        // Put it back one offset early: now it overlaps its predecessor.
        let early = path.join(format!("{:020}.log", middle.base_offset - 1));
        std::fs::rename(&moved, &early).unwrap();
        let error = Log::open(&path, small_segments())
            .await
            .err()
            .expect("an overlap is refused");
        assert!(error.to_string().contains("overlap"), "{error}");
        assert!(
            error
                .to_string()
                .contains(&format!("{:020}.log", middle.base_offset - 1))
        );
    });
}

#[test]
fn a_damaged_sealed_segment_is_never_served() {
    in_temp_dir(|path| async move {
        let segments = multi_segment_log(&path).await;
        let first = &segments[0];
        let mut bytes = std::fs::read(&first.path).unwrap();
        let position = bytes.len() / 2;
        bytes[position] ^= 0xff;
        std::fs::write(&first.path, &bytes).unwrap();

        // Its index is intact, so open trusts it; the read checks every batch's CRC.
        let log = Log::open(&path, small_segments()).await.unwrap();
        let mut offset = 0;
        let mut saw_error = false;
        while offset < first.next_offset {
            match log.read(offset, 1).await {
                Ok(outcome) => offset = records(&outcome.to_vec()).last().unwrap().0 + 1,
                Err(error) => {
                    assert!(
                        matches!(error, StorageError::CorruptSegment { .. }),
                        "{error}"
                    );
                    assert!(
                        error
                            .to_string()
                            .contains(&first.path.display().to_string())
                    );
                    saw_error = true;
                    offset += 5;
                }
            }
        }
        assert!(saw_error, "the damaged batch must be refused");
        log.close().await.unwrap();

        // Without its index, open rescans the segment and refuses the directory.
        std::fs::remove_file(first.path.with_extension("index")).unwrap();
        let error = Log::open(&path, small_segments())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(error, StorageError::CorruptSegment { .. }),
            "{error}"
        );
    });
}

const CRASH_DIR_ENV: &str = "SPATE_CRASH_CHILD_DIR";

/// Not a test on its own: the body of the child process that `kill_9_loses_nothing_acknowledged`
/// starts and kills. Without the environment variable it does nothing.
#[test]
fn crash_child_appends_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    run(move || async move {
        let log = Log::open(&dir, small_segments()).await.unwrap();
        let start = log.log_end_offset();
        for index in 0.. {
            let appends: Vec<_> = (0..8)
                .map(|lane| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let tag = format!("k{}", start + index * 8 + lane);
                        log.append(batch_mut(&tag, 3, 300, 1_000 + index))
                            .await
                            .unwrap()
                    })
                })
                .collect();
            for append in appends {
                let info = append.await;
                // Printed only after the append is acknowledged (durable: flush.ms=0).
                println!("acked {} {}", info.base_offset, info.last_offset);
            }
        }
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    let mut acknowledged: Vec<(i64, i64)> = Vec::new();
    for round in 0..3 {
        let lines = acknowledged_then_killed(
            "storage_recovery::crash_child_appends_until_killed",
            (CRASH_DIR_ENV, &path),
            200 + round as usize * 150,
        );
        acknowledged.extend(lines.iter().map(|fields| (fields[0], fields[1])));
        let path = path.clone();
        let acknowledged = acknowledged.clone();
        run(move || async move {
            let log = Log::open(&path, small_segments()).await.unwrap();
            let end = log.log_end_offset();
            for &(base, last) in &acknowledged {
                assert!(
                    last < end,
                    "acknowledged offset {last} lost (log end {end})"
                );
                let got = records(&log.read(base, 1).await.unwrap().to_vec());
                let first = got
                    .iter()
                    .find(|(offset, _)| *offset == base)
                    .expect("present");
                assert!(first.1.starts_with(b"k"), "record at {base} intact");
            }
            let all = read_all(&log, 0).await;
            assert_eq!(
                all.len() as i64,
                end,
                "every offset below the end is readable once"
            );
            log.close().await.unwrap();
        });
    }
}

#[test]
fn zeros_inside_a_sealed_segment_are_damage_and_the_directory_is_left_untouched() {
    in_temp_dir(|path| async move {
        let segments = multi_segment_log(&path).await;
        let first = &segments[0];
        // Zero the header of a batch in the middle, as a lost write would, and lose the index.
        let mut bytes = std::fs::read(&first.path).unwrap();
        let batch_length = spate::record::BatchHeader::parse(&bytes)
            .unwrap()
            .total_bytes();
        bytes[batch_length * 2..batch_length * 2 + 64].fill(0);
        std::fs::write(&first.path, &bytes).unwrap();
        std::fs::remove_file(first.path.with_extension("index")).unwrap();
        let listing = |path: &Path| {
            let mut names: Vec<(String, u64)> = std::fs::read_dir(path)
                .unwrap()
                .map(|entry| entry.unwrap())
                .map(|entry| {
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        entry.metadata().unwrap().len(),
                    )
                })
                .filter(|(name, _)| !name.starts_with('.'))
                .collect();
            names.sort();
            names
        };
        let before = listing(&path);

        let error = Log::open(&path, small_segments())
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(error, StorageError::CorruptSegment { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains(&first.path.display().to_string()),
            "{error}"
        );
        assert_eq!(
            listing(&path),
            before,
            "a refused directory is not modified"
        );
    });
}

#[test]
fn a_cut_tail_is_kept_beside_the_segment() {
    let root = tempfile::tempdir().unwrap();
    let (path, start, end, last_base, bytes) = three_batch_log(root.path().join("original"));
    let dir = root.path().join("flipped");
    std::fs::create_dir_all(&dir).unwrap();
    let mut damaged = bytes.clone();
    damaged[start as usize + 30] ^= 0x01;
    let segment = dir.join(path.file_name().unwrap());
    std::fs::write(&segment, &damaged).unwrap();
    let dir_for_check = dir.clone();
    run(move || async move { check_prefix(&dir_for_check, last_base).await });
    let kept = dir.join(format!(
        "{}.damaged-at-{start}",
        path.file_name().unwrap().to_string_lossy()
    ));
    let kept_bytes = std::fs::read(&kept).expect("the cut bytes are kept");
    assert_eq!(
        &kept_bytes[..(end - start) as usize],
        &damaged[start as usize..end as usize]
    );
}

#[test]
fn a_partition_directory_is_opened_by_one_log_at_a_time() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        let error = Log::open(&path, LogConfig::default())
            .await
            .err()
            .expect("locked");
        assert!(matches!(error, StorageError::Locked { .. }), "{error}");
        log.close().await.unwrap();
        let again = Log::open(&path, LogConfig::default()).await.unwrap();
        again.close().await.unwrap();
    });
}

/// A one-record batch of exactly 1 KiB, so that four of them fill a 4 KiB block and every
/// block starts with a batch header.
fn kib_batch(tag: &str) -> bytes::BytesMut {
    (0..2048)
        .map(|value_bytes| batch_mut(tag, 1, value_bytes, 1_000))
        .find(|batch| batch.len() == 1024)
        .expect("some value size makes a 1 KiB batch")
}

#[test]
fn a_zeroed_block_inside_the_active_segment_is_kept_before_the_cut() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        for index in 0..12 {
            log.append(kib_batch(&format!("z{index:02}")))
                .await
                .unwrap();
        }
        let segment = log.segments()[0].clone();
        assert!(!segment.sealed);
        log.close().await.unwrap();

        // A bad disk loses the second block: it reads back as zeros, starting exactly on a
        // batch header, with acknowledged batches after it.
        let mut bytes = std::fs::read(&segment.path).unwrap();
        assert_eq!(bytes.len(), 12 * 1024);
        bytes[4096..8192].fill(0);
        std::fs::write(&segment.path, &bytes).unwrap();

        // After the clean close, the open takes the close's snapshot (the file's size, last
        // batch and last block agree with it) and does not read the segment through; a
        // read of the lost block is an error, never data, and the batches around it serve.
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.log_end_offset(), 12);
        assert!(matches!(
            log.read(4, 1 << 20).await,
            Err(StorageError::CorruptSegment { .. })
        ));
        assert_eq!(
            records(&log.read(8, 1 << 20).await.unwrap().to_vec()).len(),
            4
        );
        log.close().await.unwrap();
        // As after a crash: no snapshot, so the open scans the segment.
        std::fs::remove_file(segment.path.with_extension("clean")).unwrap();

        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(
            log.log_end_offset(),
            4,
            "the batches before the block survive"
        );
        let values: Vec<Vec<u8>> = read_all(&log, 0).await.into_iter().map(|r| r.1).collect();
        for (index, value) in values.iter().enumerate() {
            assert!(value.starts_with(format!("z{index:02}-0").as_bytes()));
        }
        let kept = path.join(format!(
            "{}.damaged-at-4096",
            segment.path.file_name().unwrap().to_string_lossy()
        ));
        let kept_bytes = std::fs::read(&kept).expect("the cut bytes are kept");
        assert_eq!(&kept_bytes[..], &bytes[4096..], "everything after the cut");
        let later = records(&kept_bytes[4096..]);
        assert_eq!(later.len(), 4, "the later batches are in the copy");
        assert!(later[0].1.starts_with(b"z08-0"));
        assert!(later[3].1.starts_with(b"z11-0"));

        let next = log.append(batch_mut("after", 1, 10, 2_000)).await.unwrap();
        assert_eq!(next.base_offset, 4, "appends continue after the cut");
        log.close().await.unwrap();
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.log_end_offset(), 5);
        log.close().await.unwrap();
    });
}

const MANY_CRASH_DIR_ENV: &str = "SPATE_MANY_CRASH_CHILD_DIR";
const MANY_PARTITIONS: usize = 200;

/// Not a test on its own: the child process of
/// `kill_9_loses_nothing_acknowledged_over_200_partitions`. Appends to 200 logs on one
/// executor at once (their syncs share durability rounds), printing each acknowledgement.
#[test]
fn crash_child_appends_to_many_logs_until_killed() {
    let Ok(dir) = std::env::var(MANY_CRASH_DIR_ENV) else {
        return;
    };
    run(move || async move {
        let mut logs = Vec::new();
        for partition in 0..MANY_PARTITIONS {
            let path = Path::new(&dir).join(format!("p{partition}"));
            logs.push(Log::open(&path, LogConfig::default()).await.unwrap());
        }
        for round in 0i64.. {
            let appends: Vec<_> = logs
                .iter()
                .enumerate()
                .map(|(partition, log)| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let tag = format!("m{partition}-{round}");
                        let info = log
                            .append(batch_mut(&tag, 2, 200, 1_000 + round))
                            .await
                            .unwrap();
                        // Printed only once acknowledged (durable: flush.ms=0).
                        println!("acked {partition} {} {}", info.base_offset, round);
                    })
                })
                .collect();
            for append in appends {
                append.await;
            }
        }
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged_over_200_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged: Vec<(usize, i64, i64)> = Vec::new();
    for attempt in 0..2 {
        // Killed mid-round: some of the 200 appends of a round answered, some not.
        let lines = acknowledged_then_killed(
            "storage_recovery::crash_child_appends_to_many_logs_until_killed",
            (MANY_CRASH_DIR_ENV, dir.path()),
            MANY_PARTITIONS * (3 + attempt) + 77,
        );
        acknowledged.extend(
            lines
                .iter()
                .map(|fields| (fields[0] as usize, fields[1], fields[2])),
        );
        let root = dir.path().to_path_buf();
        let acknowledged = acknowledged.clone();
        run(move || async move {
            for partition in 0..MANY_PARTITIONS {
                let log = Log::open(&root.join(format!("p{partition}")), LogConfig::default())
                    .await
                    .unwrap();
                let all = read_all(&log, 0).await;
                assert_eq!(all.len() as i64, log.log_end_offset(), "p{partition}");
                for &(_, base, round) in acknowledged.iter().filter(|a| a.0 == partition) {
                    let record = all
                        .iter()
                        .find(|(offset, _)| *offset == base)
                        .unwrap_or_else(|| panic!("p{partition}: acknowledged {base} lost"));
                    let tag = format!("m{partition}-{round}-0");
                    assert!(
                        record.1.starts_with(tag.as_bytes()),
                        "p{partition} at {base}"
                    );
                }
                log.close().await.unwrap();
            }
        });
    }
}

fn idempotent(tag: &str, producer_id: i64, sequence: i32) -> bytes::BytesMut {
    let mut batch = batch_mut(tag, 2, 100, 1_000);
    spate::record::set_producer(&mut batch, producer_id, 0, sequence);
    batch
}

#[test]
fn a_clean_close_spares_the_next_open_a_scan_and_keeps_the_producers() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        for sequence in 0..6 {
            log.append(idempotent(&format!("i{sequence}"), 7, sequence * 2))
                .await
                .unwrap();
        }
        log.append(batch_mut("plain", 3, 100, 2_000)).await.unwrap();
        log.close().await.unwrap();
        let all = {
            let log = Log::open(&path, LogConfig::default()).await.unwrap();
            assert_eq!(
                log.stats().scanned_bytes_at_open,
                0,
                "the snapshot was taken"
            );
            assert_eq!(log.log_end_offset(), 15);
            // The producer table came with it: a retry of the last batch is a duplicate.
            let retry = log.append(idempotent("i5", 7, 10)).await.unwrap();
            assert_eq!((retry.base_offset, retry.last_offset), (10, 11));
            assert_eq!(log.stats().duplicates, 1);
            assert!(matches!(
                log.append(idempotent("gap", 7, 20)).await,
                Err(StorageError::OutOfOrderSequence { .. })
            ));
            let next = log.append(idempotent("i6", 7, 12)).await.unwrap();
            assert_eq!(next.base_offset, 15);
            assert_eq!(log.offset_for_timestamp(2_000).await.unwrap(), Some(12));
            let all = read_all(&log, 0).await;
            log.close().await.unwrap();
            all
        };
        assert_eq!(all.len(), 17);
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.stats().scanned_bytes_at_open, 0);
        assert_eq!(read_all(&log, 0).await, all);
        let snapshot = log.segments()[0].path.with_extension("clean");
        let written = std::fs::read(&snapshot).unwrap();
        log.close().await.unwrap();
        // Unchanged since the open: the snapshot it took is still true and stays as it was.
        assert_eq!(std::fs::read(&snapshot).unwrap(), written);
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert_eq!(log.stats().scanned_bytes_at_open, 0);
        // The first change removes it.
        log.append(batch_mut("last", 1, 10, 3_000)).await.unwrap();
        assert!(!snapshot.exists());
        log.close().await.unwrap();
    });
}

#[test]
fn a_snapshot_that_no_longer_matches_the_segment_is_refused_and_the_segment_scanned() {
    in_temp_dir(|path| async move {
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        log.append(batch_mut("a", 3, 100, 1_000)).await.unwrap();
        let segment = log.segments()[0].path.clone();
        log.close().await.unwrap();
        let snapshot = segment.with_extension("clean");
        let stale = std::fs::read(&snapshot).unwrap();

        // Appends after the open that took the snapshot, then a crash that resurrects it
        // (its removal lost): one append that stays within the last block, one that grows
        // the file.
        for (tag, count, value_bytes) in [("b", 1, 10), ("c", 40, 200)] {
            let log = Log::open(&path, LogConfig::default()).await.unwrap();
            let end = log.log_end_offset();
            log.append(batch_mut(tag, count, value_bytes, 1_000))
                .await
                .unwrap();
            log.close().await.unwrap();
            std::fs::write(&snapshot, &stale).unwrap();
            let log = Log::open(&path, LogConfig::default()).await.unwrap();
            assert!(log.stats().scanned_bytes_at_open > 0, "{tag}: scanned");
            assert_eq!(log.log_end_offset(), end + count as i64, "{tag}");
            log.close().await.unwrap();
        }
        // A torn snapshot (a crash while it was written back) is refused by its CRC.
        let good = std::fs::read(&snapshot).unwrap();
        std::fs::write(&snapshot, &good[..good.len() / 2]).unwrap();
        let log = Log::open(&path, LogConfig::default()).await.unwrap();
        assert!(log.stats().scanned_bytes_at_open > 0);
        assert_eq!(log.log_end_offset(), 44);
        assert_eq!(read_all(&log, 0).await.len(), 44);
        log.close().await.unwrap();
        // A snapshot of a segment that is no longer the active one is removed at open.
        std::fs::write(segment.with_extension("clean"), &good).unwrap();
        let log = Log::open(&path, small_segments()).await.unwrap();
        for index in 0..40 {
            log.append(batch_mut(&format!("r{index}"), 4, 1000, 1_000))
                .await
                .unwrap();
        }
        assert!(log.segments().len() > 1);
        log.close().await.unwrap();
        std::fs::write(&snapshot, &good).unwrap();
        let log = Log::open(&path, small_segments()).await.unwrap();
        assert!(
            !snapshot.exists(),
            "the first segment's stray snapshot is gone"
        );
        assert_eq!(
            log.stats().scanned_bytes_at_open,
            0,
            "the last one's was taken"
        );
        assert_eq!(read_all(&log, 0).await.len(), 44 + 160);
        log.close().await.unwrap();
    });
}

/// Runs the crash child `test` of this binary (with `env` set), reads its first `count`
/// "acked ..." lines, then kills it (SIGKILL) and returns each line's numbers. A child
/// that stops acknowledging before `count` fails the test after a minute.
fn acknowledged_then_killed(test: &str, env: (&str, &Path), count: usize) -> Vec<Vec<i64>> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture"])
        .env(env.0, env.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let watchdog = Watchdog::arm(child.id(), std::time::Duration::from_secs(60));
    let lines: Vec<Vec<i64>> = stdout
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| {
            let rest = line.strip_prefix("acked ")?.to_string();
            Some(
                rest.split(' ')
                    .map(|field| field.parse().unwrap())
                    .collect(),
            )
        })
        .take(count)
        .collect();
    drop(watchdog);
    assert_eq!(
        lines.len(),
        count,
        "the child stopped acknowledging appends"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

/// Kills a crash child (SIGKILL) that is still running `after` it was armed, unless
/// dropped first: a child that stops answering would otherwise block the test's read of
/// its output for ever. The kill and the drop take one lock, so the child is never
/// killed after the test has reaped it (its pid could be reused).
struct Watchdog {
    done: std::sync::Arc<std::sync::Mutex<bool>>,
}

impl Watchdog {
    fn arm(pid: u32, after: std::time::Duration) -> Watchdog {
        let done = std::sync::Arc::new(std::sync::Mutex::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + after;
            while std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
                if *flag.lock().unwrap() {
                    return;
                }
            }
            let done = flag.lock().unwrap();
            if !*done {
                // SAFETY: kill on a child the test has not reaped yet (see above).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        });
        Watchdog { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.done.lock().unwrap() = true;
    }
}
