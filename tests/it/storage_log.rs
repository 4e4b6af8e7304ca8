use spate::storage::{Log, LogConfig, StorageError};

use crate::support::{batch_mut, records, run};

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
