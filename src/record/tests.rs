use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
struct TestRecord {
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// Field sizes that sit on varint boundaries (0, 63/64, 127/128, 8191/8192) and beyond.
fn edge_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        Just(Some(Vec::new())),
        prop::sample::select(vec![1usize, 63, 64, 127, 128, 8191, 8192, 70_000])
            .prop_flat_map(|len| prop::collection::vec(any::<u8>(), len).prop_map(Some)),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Some),
    ]
}

fn test_record() -> impl Strategy<Value = TestRecord> {
    (
        prop_oneof![any::<i64>(), 0i64..2_000_000_000_000, Just(-1i64)],
        edge_bytes(),
        edge_bytes(),
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..20), edge_bytes()),
            0..4,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| TestRecord {
            timestamp,
            key,
            value,
            headers,
        })
}

fn build(records: &[TestRecord], base_offset: i64) -> Bytes {
    let mut builder = BatchBuilder::new();
    for record in records {
        let headers: Vec<HeaderRef<'_>> = record
            .headers
            .iter()
            .map(|(key, value)| HeaderRef {
                key,
                value: value.as_deref(),
            })
            .collect();
        let before = builder.encoded_bytes();
        let predicted = builder.record_bytes(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        builder.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        assert_eq!(builder.encoded_bytes() - before, predicted);
    }
    builder.build(base_offset)
}

fn small_batch(count: usize) -> Bytes {
    let records: Vec<TestRecord> = (0..count)
        .map(|index| TestRecord {
            timestamp: 1_700_000_000_000 + index as i64,
            key: Some(format!("key-{index}").into_bytes()),
            value: Some(vec![index as u8; 10]),
            headers: vec![(b"h".to_vec(), Some(b"v".to_vec()))],
        })
        .collect();
    build(&records, 0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn batch_round_trip(
        records in prop::collection::vec(test_record(), 1..12),
        base_offset in 0i64..i64::MAX / 2,
    ) {
        let batch = build(&records, base_offset);
        let header = validate(&batch).unwrap();
        prop_assert_eq!(header.base_offset, base_offset);
        prop_assert_eq!(header.records_count as usize, records.len());
        prop_assert_eq!(header.total_bytes(), batch.len());
        let max_timestamp = records.iter().map(|r| r.timestamp).max().unwrap();
        prop_assert_eq!(header.max_timestamp, max_timestamp);

        let decoded = decode_records(&batch).unwrap();
        prop_assert_eq!(decoded.len(), records.len());
        for (index, (got, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, base_offset + index as i64);
            prop_assert_eq!(got.timestamp, want.timestamp);
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
            prop_assert_eq!(got.headers.len(), want.headers.len());
            for (got, want) in got.headers.iter().zip(&want.headers) {
                prop_assert_eq!(&got.key[..], &want.0[..]);
                prop_assert_eq!(got.value.as_deref(), want.1.as_deref());
            }
        }
    }

    #[test]
    fn rebasing_keeps_the_batch_valid(base in any::<i64>(), count in 1usize..20) {
        let mut batch = BytesMut::from(&small_batch(count)[..]);
        set_base_offset(&mut batch, base);
        let header = validate(&batch).unwrap();
        prop_assert_eq!(header.base_offset, base);
    }

    #[test]
    fn any_flipped_covered_byte_is_rejected(count in 1usize..5, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut batch = BytesMut::from(&small_batch(count)[..]);
        // Bytes 0..12 (base offset, length) and 12..17 (epoch, magic) are outside the CRC;
        // the length and magic are still checked, the base offset and epoch are not.
        let position = 17 + at.index(batch.len() - 17);
        batch[position] ^= 1 << bit;
        prop_assert!(validate(&batch).is_err());
    }

    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate(&bytes);
        let _ = BatchHeader::parse(&bytes);
        let _ = split_batches(&bytes).count();
        if bytes.len() > BATCH_HEADER_BYTES_FOR_TESTS {
            let _ = RecordIter::new(&bytes[BATCH_HEADER_BYTES_FOR_TESTS..]).count();
        }
    }

    #[test]
    fn corrupt_records_with_a_fixed_crc_never_panic(
        count in 1usize..4,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        // Damage the record section, then repair the CRC, so the record decoder itself
        // must catch the damage (or accept bytes that happen to still parse).
        let mut batch = BytesMut::from(&small_batch(count)[..]);
        let position = BATCH_HEADER_BYTES_FOR_TESTS + at.index(batch.len() - BATCH_HEADER_BYTES_FOR_TESTS);
        batch[position] = value;
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = validate(&batch);
        let _ = decode_records(&batch.freeze());
    }
}

const BATCH_HEADER_BYTES_FOR_TESTS: usize = crate::limits::BATCH_HEADER_BYTES;

fn with_fixed_crc(mut batch: BytesMut) -> BytesMut {
    let crc = compute_crc(&batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    batch
}

#[test]
fn errors_name_the_problem() {
    let good = small_batch(3);

    assert!(matches!(
        validate(&good[..30]),
        Err(BatchError::Truncated { .. })
    ));
    assert!(matches!(
        validate(&good[..good.len() - 1]),
        Err(BatchError::Truncated { .. })
    ));

    let mut longer = BytesMut::from(&good[..]);
    longer.extend_from_slice(&[0]);
    assert!(matches!(
        validate(&longer),
        Err(BatchError::LengthMismatch { .. })
    ));

    let mut bad_crc = BytesMut::from(&good[..]);
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert!(matches!(
        validate(&bad_crc),
        Err(BatchError::CrcMismatch { .. })
    ));

    let mut magic = BytesMut::from(&good[..]);
    magic[16] = 1;
    assert!(matches!(
        validate(&magic),
        Err(BatchError::UnsupportedMagic(1))
    ));

    let mut huge = BytesMut::from(&good[..]);
    huge[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        validate(&huge),
        Err(BatchError::InvalidLength { .. })
    ));

    let mut negative = BytesMut::from(&good[..]);
    negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(
        validate(&negative),
        Err(BatchError::InvalidLength { .. })
    ));

    // A compressed codec whose bytes do not decompress is named in the error.
    for (codec, name) in [(1i16, "gzip"), (2, "snappy"), (3, "lz4"), (4, "zstd")] {
        let mut compressed = BytesMut::from(&good[..]);
        compressed[21..23].copy_from_slice(&codec.to_be_bytes());
        let error = validate(&with_fixed_crc(compressed)).unwrap_err();
        assert!(
            matches!(error, BatchError::Decompression { .. }),
            "{name}: {error}"
        );
        assert!(error.to_string().contains(name), "{error}");
    }
    let mut unknown = BytesMut::from(&good[..]);
    unknown[21..23].copy_from_slice(&7i16.to_be_bytes());
    assert!(matches!(
        validate(&with_fixed_crc(unknown)),
        Err(BatchError::UnknownCompression(7))
    ));

    let mut count = BytesMut::from(&good[..]);
    count[57..61].copy_from_slice(&4i32.to_be_bytes());
    count[23..27].copy_from_slice(&3i32.to_be_bytes());
    assert!(matches!(
        validate(&with_fixed_crc(count)),
        Err(BatchError::RecordCount { .. })
    ));

    let mut delta = BytesMut::from(&good[..]);
    delta[23..27].copy_from_slice(&5i32.to_be_bytes());
    assert!(matches!(
        validate(&with_fixed_crc(delta)),
        Err(BatchError::OffsetDeltaCount { .. })
    ));

    let mut empty = BytesMut::from(&good[..]);
    empty[57..61].copy_from_slice(&0i32.to_be_bytes());
    assert!(matches!(
        validate(&with_fixed_crc(empty)),
        Err(BatchError::Empty)
    ));
}

/// `batch` with its max timestamp set to `max_timestamp` and its CRC recomputed, so that
/// only the timestamp is wrong.
fn with_max_timestamp(batch: &[u8], max_timestamp: i64) -> BytesMut {
    let mut forged = BytesMut::from(batch);
    forged[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    with_fixed_crc(forged)
}

#[test]
fn a_max_timestamp_other_than_the_records_is_refused_for_create_time_batches() {
    let good = small_batch(3);
    let header = validate_new(&good).unwrap();
    let records_max = 1_700_000_000_002;
    assert_eq!(
        header.max_timestamp, records_max,
        "the builder sets the records' max"
    );
    assert!(!header.is_log_append_time());

    for forged_max in [i64::MAX, records_max - 1, header.base_timestamp, -1] {
        let error = validate_new(&with_max_timestamp(&good, forged_max)).unwrap_err();
        assert_eq!(
            error,
            BatchError::MaxTimestampMismatch {
                declared: forged_max,
                records: records_max
            }
        );
        let message = error.to_string();
        assert!(message.contains(&forged_max.to_string()), "{message}");
        assert!(message.contains(&records_max.to_string()), "{message}");
        // Readers take the batch as it is: one stored before the check stays readable.
        assert!(validate(&with_max_timestamp(&good, forged_max)).is_ok());
    }

    // LogAppendTime (attributes bit 3): the broker's timestamp, not the records', is the
    // batch's.
    let mut log_append_time = BytesMut::from(&good[..]);
    log_append_time[21..23].copy_from_slice(&0x08i16.to_be_bytes());
    let log_append_time = with_max_timestamp(&log_append_time, i64::MAX);
    assert!(validate_new(&log_append_time).unwrap().is_log_append_time());

    // Records with no timestamp (-1, Kafka's NO_TIMESTAMP) have a max of -1.
    let mut builder = BatchBuilder::new();
    builder.push(-1, None, Some(b"v"), &[]);
    builder.push(-1, None, Some(b"w"), &[]);
    assert_eq!(validate_new(&builder.build(0)).unwrap().max_timestamp, -1);

    // The largest timestamp need not be the last record's.
    let mut builder = BatchBuilder::new();
    for timestamp in [5_000, 9_000, 7_000] {
        builder.push(timestamp, None, Some(b"v"), &[]);
    }
    assert_eq!(
        validate_new(&builder.build(0)).unwrap().max_timestamp,
        9_000
    );
}

#[test]
fn split_batches_walks_concatenated_batches_and_stops_at_damage() {
    let mut joined = BytesMut::new();
    joined.extend_from_slice(&small_batch(2));
    joined.extend_from_slice(&small_batch(5));
    let ranges: Vec<_> = split_batches(&joined)
        .map(|result| result.unwrap())
        .collect();
    assert_eq!(ranges.len(), 2);
    assert_eq!(ranges[0].0.records_count, 2);
    assert_eq!(ranges[1].1.end, joined.len());

    joined.extend_from_slice(&small_batch(1)[..20]);
    let results: Vec<_> = split_batches(&joined).collect();
    assert_eq!(results.len(), 3);
    assert!(results[2].is_err());
}

/// One record (key "key", value "value", no headers) encoded by hand from the layout in
/// Kafka's protocol documentation ("Record" under "Message format"): it pins our varint
/// and field order to the documented layout rather than to our own decoder.
#[test]
fn matches_the_kafka_layout() {
    let mut builder = BatchBuilder::new();
    builder.push(1_700_000_000_000, Some(b"key"), Some(b"value"), &[]);
    let batch = builder.build(0);
    // Record: body length 14 (zig-zag varint 0x1c), attributes 0, timestamp delta 0,
    // offset delta 0, key length 3 (0x06) "key", value length 5 (0x0a) "value", 0 headers.
    let record: &[u8] = &[
        0x1c, 0x00, 0x00, 0x00, 0x06, b'k', b'e', b'y', 0x0a, b'v', b'a', b'l', b'u', b'e', 0x00,
    ];
    assert_eq!(&batch[BATCH_HEADER_BYTES_FOR_TESTS..], record);
    assert_eq!(batch.len(), 61 + record.len());
    let header = BatchHeader::parse(&batch).unwrap();
    assert_eq!(header.batch_length as usize, batch.len() - 12);
    assert_eq!(header.crc, crc32c::crc32c(&batch[21..]));
}

#[test]
fn every_codec_round_trips_through_build_validate_and_decode() {
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut builder = BatchBuilder::new();
        for i in 0..50u32 {
            let value = format!("value {i} ").repeat(20);
            builder.push(
                1_000 + i64::from(i),
                Some(b"key"),
                Some(value.as_bytes()),
                &[],
            );
        }
        let plain_bytes = builder.encoded_bytes();
        let batch = builder.build_compressed(7, codec);
        assert!(batch.len() < plain_bytes / 2, "{codec} did not compress");
        let header = validate_new(&batch).unwrap();
        assert_eq!(header.compression().unwrap(), codec);
        let records = decode_records(&batch).unwrap();
        assert_eq!(records.len(), 50);
        assert_eq!(records[49].offset, 7 + 49);
        assert_eq!(
            records[3].value.as_deref(),
            Some("value 3 ".repeat(20).as_bytes())
        );
    }
}

#[test]
fn snappy_in_the_xerial_framing_of_kafkas_java_client_decodes() {
    let plain = b"framed by snappy-java".repeat(10);
    let block = snap::raw::Encoder::new().compress_vec(&plain).unwrap();
    let mut framed = b"\x82SNAPPY\x00".to_vec();
    framed.extend_from_slice(&1i32.to_be_bytes());
    framed.extend_from_slice(&1i32.to_be_bytes());
    for half in [&block[..], &block[..]] {
        framed.extend_from_slice(&(half.len() as i32).to_be_bytes());
        framed.extend_from_slice(half);
    }
    let out = compression::decompress(Compression::Snappy, &framed, 1 << 20).unwrap();
    assert_eq!(out, [plain.clone(), plain].concat());
    framed.truncate(framed.len() - 3);
    assert!(compression::decompress(Compression::Snappy, &framed, 1 << 20).is_err());
}

#[test]
fn decompression_is_bounded() {
    let zeros = vec![0u8; 1 << 20];
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let packed = compression::compress(codec, &zeros);
        assert!(matches!(
            compression::decompress(codec, &packed, 1000),
            Err(BatchError::DecompressedTooLarge { max: 1000, .. })
        ));
        assert_eq!(
            compression::decompress(codec, &packed, 1 << 20).unwrap(),
            zeros
        );
    }
}

#[test]
fn a_producer_stamp_keeps_the_batch_valid() {
    let mut builder = BatchBuilder::new();
    builder.push(1, None, Some(b"v"), &[]);
    let mut batch = BytesMut::from(&builder.build(0)[..]);
    set_producer(&mut batch, 42, 3, 17);
    let header = validate(&batch).unwrap();
    assert_eq!(
        (
            header.producer_id,
            header.producer_epoch,
            header.base_sequence
        ),
        (42, 3, 17)
    );
}

/// Found by the record_batch fuzz target (from a seed with its base offset at the top): a
/// valid batch whose records' offsets pass i64::MAX overflowed in `decode_records`.
#[test]
fn record_offsets_past_i64_max_are_an_error_not_an_overflow() {
    let mut builder = BatchBuilder::new();
    for value in [&b"a"[..], b"b", b"c"] {
        builder.push(0, None, Some(value), &[]);
    }
    let batch = builder.build(i64::MAX - 1);
    assert!(
        validate(&batch).is_ok(),
        "the CRC does not cover the base offset"
    );
    assert!(matches!(
        decode_records(&batch),
        Err(BatchError::MalformedRecord(reason)) if reason.contains("i64::MAX")
    ));
    let mut builder = BatchBuilder::new();
    builder.push(0, None, Some(b"a"), &[]);
    let records = decode_records(&builder.build(i64::MAX)).unwrap();
    assert_eq!(records[0].offset, i64::MAX);
}
