//! The bodies of the fuzz targets (issue 15); not part of Spate's API.
//!
//! Each function feeds arbitrary bytes to a decoder or validator that the broker (or its
//! client) runs on bytes it cannot trust, from the network or from disk, the way it calls
//! it, and checks cheaply what must hold of whatever it accepts: re-encoding gives the same
//! bytes or value, a validated batch's offsets are in range, recovery never keeps more
//! bytes than it was given. A panic is a bug; an error is the right answer to bad bytes.
//!
//! Where a CRC guards the bytes, a target also tries them with the CRC (and the length it
//! covers) made right, so that the fuzzer explores what lies behind the check instead of
//! stopping at it.
//!
//! `tests/fuzz` is the cargo-fuzz crate that runs them, one target per function
//! (`TARGETS`), with their corpora; `tests/it/fuzz_corpora.rs` replays the corpora (and
//! `seeds`) in the normal test run.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use crate::broker::metadata::{self, ClusterMetadata};
use crate::group::offsets::{self, Entry, GroupOffsets};
use crate::kafka;
use crate::limits::{
    BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES, REQUEST_ENTRIES_MAX,
};
use crate::protocol::{
    ApiKey, REQUEST_HEADER_BYTES, Request, Response, decode_request_header, split_frame,
};
use crate::record::{
    BatchBuilder, BatchError, BatchHeader, HeaderRef, Record, decode_records, split_batches,
    split_new_batches, validate, validate_framing, validate_new,
};
use crate::storage::{
    ScanStop, SegmentMeta, SegmentSummary, decode_clean, decode_offset_index, decode_time_index,
    encode_clean, encode_offset_index, encode_time_index, scan_bytes,
};

/// A target's body: any bytes in, a panic for a bug.
pub type Target = fn(&[u8]);

/// Every target: its name (its file under `tests/fuzz/fuzz_targets` and its corpus
/// directory) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("native_frame", native_frame),
    ("record_batch", record_batch),
    ("segment_recovery", segment_recovery),
    ("index_file", index_file),
    ("metadata_archive", metadata_archive),
    ("offsets_record", offsets_record),
    ("kafka_request", kafka_request),
];

// ---- native protocol ------------------------------------------------------------------------

/// A frame limit small enough that the fuzzer meets it.
const FUZZ_FRAME_BYTES_MAX: usize = 1 << 16;

/// The bytes a native connection reads: split into frames as the connection does, each
/// frame decoded as a request (as the broker does) and as an answer (as the client does).
pub fn native_frame(data: &[u8]) {
    let mut buffer = BytesMut::from(data);
    let mut taken = 0;
    while let Ok(Some(frame)) = split_frame(&mut buffer, FUZZ_FRAME_BYTES_MAX) {
        assert!(
            frame.len() <= FUZZ_FRAME_BYTES_MAX,
            "a frame over the limit"
        );
        taken += 4 + frame.len();
        native_request(frame.clone());
        native_response(frame);
    }
    assert_eq!(taken + buffer.len(), data.len(), "split_frame lost bytes");
}

fn native_request(frame: Bytes) {
    let Ok((header, body)) = decode_request_header(frame.clone()) else {
        assert!(frame.len() < REQUEST_HEADER_BYTES, "a whole header refused");
        return;
    };
    assert_eq!(body.len(), frame.len() - REQUEST_HEADER_BYTES);
    let Ok((request, entries)) = Request::decode_counting(&header, body.clone()) else {
        return;
    };
    assert!(
        entries <= REQUEST_ENTRIES_MAX,
        "more entries than the limit"
    );
    assert_eq!(request.api_key() as u16, header.api_key);
    // Encoded again (at the highest version) it decodes to the same request, from the
    // same bytes where the version's layout is the same: the encoding is canonical.
    let encoded = request.encode(header.correlation_id).freeze();
    let (again_header, again_body) =
        decode_request_header(encoded.slice(4..)).expect("an encoded header decodes");
    assert_eq!(again_header.correlation_id, header.correlation_id);
    let same_layout = request.api_key() != ApiKey::CreateTopics
        || (header.api_version >= 2) == (again_header.api_version >= 2);
    if same_layout {
        assert_eq!(again_body, body, "the request re-encodes to other bytes");
    }
    let (again, again_entries) =
        Request::decode_counting(&again_header, again_body).expect("an encoded request decodes");
    assert_eq!(again, request);
    assert_eq!(again_entries, entries);
}

fn native_response(frame: Bytes) {
    let Some(correlation) = frame.first_chunk::<4>() else {
        return;
    };
    let correlation_id = u32::from_be_bytes(*correlation);
    // The client knows which request an answer is for; here the correlation id says.
    let api_key = ApiKey::ALL[correlation_id as usize % ApiKey::ALL.len()];
    let Ok(response) = Response::decode(api_key, frame.slice(4..)) else {
        return;
    };
    // Encoding normalises (long status messages are cut): once encoded, it is a fixpoint.
    let encoded = response.encode(correlation_id).freeze();
    assert_eq!(
        u32::from_be_bytes(encoded[..4].try_into().expect("4 bytes")) as usize,
        encoded.len() - 4,
        "the length field is wrong"
    );
    let again = Response::decode(api_key, encoded.slice(8..)).expect("an encoded answer decodes");
    assert_eq!(again.encode(correlation_id).freeze(), encoded);
}

// ---- record batches -------------------------------------------------------------------------

/// Record batches as a produce request carries them (and a fetch answer): the whole input
/// as one batch, and split into batches as the broker and the client split them.
pub fn record_batch(data: &[u8]) {
    check_batches(data);
    let fixed = fix_batch_crcs(data);
    if fixed != data {
        check_batches(&fixed);
    }
}

fn check_batches(bytes: &[u8]) {
    check_batch(bytes);
    check_split(bytes, split_new_batches(bytes));
    check_split(bytes, split_batches(bytes));
}

fn check_split(
    bytes: &[u8],
    split: impl Iterator<Item = Result<(BatchHeader, std::ops::Range<usize>), BatchError>>,
) {
    let mut end = 0;
    for item in split {
        let Ok((header, range)) = item else { break };
        assert_eq!(range.start, end, "batches are split back to back");
        assert_eq!(range.len(), header.total_bytes());
        end = range.end;
        assert_eq!(validate(&bytes[range.clone()]), Ok(header));
        check_batch(&bytes[range]);
    }
    assert!(end <= bytes.len());
}

fn check_batch(batch: &[u8]) {
    let framing = validate_framing(batch);
    let checked = validate(batch);
    let new = validate_new(batch);
    if let Ok(header) = &new {
        assert_eq!(
            checked.as_ref(),
            Ok(header),
            "validate_new is stricter than validate"
        );
    }
    let Ok(header) = checked else { return };
    assert_eq!(framing, Ok(header));
    assert_eq!(header.total_bytes(), batch.len());
    assert!(header.records_count >= 1);
    assert_eq!(header.last_offset_delta, header.records_count - 1);
    let decoded = decode_records(&Bytes::copy_from_slice(batch));
    if header
        .base_offset
        .checked_add(i64::from(header.last_offset_delta))
        .is_none()
    {
        // Offsets past i64::MAX: the framing is valid, the records are not addressable.
        assert!(decoded.is_err(), "records past i64::MAX must not decode");
        return;
    }
    let records = decoded.expect("a valid batch decodes");
    assert_eq!(records.len(), header.records_count as usize);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(
            Some(record.offset),
            header.base_offset.checked_add(index as i64)
        );
    }
    if new.is_ok() && !header.is_log_append_time() {
        let max = records.iter().map(|record| record.timestamp).max();
        assert_eq!(max, Some(header.max_timestamp));
    }
    // Built again from its records, as a producer builds it, it is valid and reads back.
    let rebuilt = rebuild(&records, header.base_offset);
    let rebuilt_header = validate_new(&rebuilt).expect("a rebuilt batch is valid");
    assert_eq!(rebuilt_header.records_count, header.records_count);
    assert_eq!(decode_records(&rebuilt), Ok(records));
}

fn rebuild(records: &[Record], base_offset: i64) -> Bytes {
    let mut builder = BatchBuilder::new();
    for record in records {
        let headers: Vec<HeaderRef<'_>> = record
            .headers
            .iter()
            .map(|header| HeaderRef {
                key: &header.key,
                value: header.value.as_deref(),
            })
            .collect();
        builder.push(
            record.timestamp,
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
    }
    builder.build(base_offset)
}

/// `bytes` with each batch's CRC made right, batch after batch; a length field that does
/// not fit what follows is made to cover the rest.
fn fix_batch_crcs(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let mut position = 0;
    while out.len() - position >= BATCH_HEADER_BYTES {
        let rest = out.len() - position;
        let length_field = position + 8..position + 12;
        let declared = i32::from_be_bytes(out[length_field.clone()].try_into().expect("4 bytes"));
        let total = i64::from(declared) + BATCH_LOG_OVERHEAD_BYTES as i64;
        let total = if (BATCH_HEADER_BYTES as i64..=rest as i64).contains(&total) {
            total as usize
        } else {
            let total = rest.min(BATCH_BYTES_MAX);
            let declared = (total - BATCH_LOG_OVERHEAD_BYTES) as i32;
            out[length_field].copy_from_slice(&declared.to_be_bytes());
            total
        };
        let crc = crc32c::crc32c(&out[position + 21..position + total]);
        out[position + 17..position + 21].copy_from_slice(&crc.to_be_bytes());
        position += total;
    }
    out
}

// ---- segment recovery -----------------------------------------------------------------------

/// Index entries every this many bytes in the fuzzed segments (small, so they have some).
const FUZZ_INDEX_INTERVAL_BYTES: u64 = 128;

/// A segment file as recovery finds it after a crash: scanned batch by batch to the end of
/// its last whole batch.
pub fn segment_recovery(data: &[u8]) {
    recover(data);
    let fixed = fix_batch_crcs(data);
    if fixed != data {
        recover(&fixed);
    }
}

fn recover(bytes: &[u8]) {
    // The segment's name gives its base offset (0 or more): here the first batch's, or
    // the scan would rarely get past it.
    let base_offset = bytes
        .first_chunk::<8>()
        .map_or(0, |first| i64::from_be_bytes(*first).max(0));
    let (meta, stop) = scan_bytes(bytes, base_offset, None, FUZZ_INDEX_INTERVAL_BYTES);
    let end = usize::try_from(meta.size_bytes).expect("in memory");
    assert!(
        end <= bytes.len(),
        "recovery kept more bytes than it was given"
    );
    assert!(meta.next_offset >= base_offset);
    match &stop {
        ScanStop::End => assert_eq!(end, bytes.len()),
        ScanStop::ZeroPadding => {
            let header = &bytes[end..bytes.len().min(end + BATCH_HEADER_BYTES)];
            assert!(header.iter().all(|&byte| byte == 0), "not padding");
        }
        ScanStop::Damaged { position, .. } => assert_eq!(*position, meta.size_bytes),
        ScanStop::ReachedOffset => panic!("no stop offset was given"),
    }
    match meta.last_batch {
        None => assert_eq!(end, 0),
        Some((position, _)) => assert!(position < meta.size_bytes),
    }
    // Recovery cuts the file back to the last whole batch: that scans to its end, the same.
    let (again, again_stop) =
        scan_bytes(&bytes[..end], base_offset, None, FUZZ_INDEX_INTERVAL_BYTES);
    assert_eq!(again_stop, ScanStop::End);
    assert_same_meta(&again, &meta);
    // Sealed, or closed cleanly, its index files and snapshot read back the same.
    if end > 0 {
        let summary = summary_of(base_offset, &meta);
        let offsets = encode_offset_index(&summary, &meta.offset_index);
        assert_eq!(
            decode_offset_index(&offsets),
            Ok((summary, meta.offset_index.clone()))
        );
        let times = encode_time_index(&summary, &meta.time_index);
        assert_eq!(
            decode_time_index(&times),
            Ok((summary, meta.time_index.clone()))
        );
    }
    let snapshot = encode_clean(base_offset, &meta, &meta.producers);
    let loaded = decode_clean(base_offset, &snapshot).expect("a snapshot reads back");
    assert_same_meta(&loaded, &meta);
    assert_eq!(loaded.last_batch, meta.last_batch);
    // A truncation's scan stops before the batch holding its offset.
    if meta.next_offset > base_offset {
        let span = (meta.next_offset - base_offset) as u64;
        let target = base_offset + (bytes.len() as u64 % span) as i64;
        let (cut, cut_stop) =
            scan_bytes(bytes, base_offset, Some(target), FUZZ_INDEX_INTERVAL_BYTES);
        assert_eq!(cut_stop, ScanStop::ReachedOffset);
        assert!(cut.next_offset <= target && cut.size_bytes <= meta.size_bytes);
    }
}

fn summary_of(base_offset: i64, meta: &SegmentMeta) -> SegmentSummary {
    SegmentSummary {
        base_offset,
        size_bytes: meta.size_bytes,
        next_offset: meta.next_offset,
        max_timestamp: meta.max_timestamp,
        first_timestamp: meta.first_timestamp.unwrap_or(i64::MIN),
    }
}

fn assert_same_meta(got: &SegmentMeta, expected: &SegmentMeta) {
    assert_eq!(got.size_bytes, expected.size_bytes);
    assert_eq!(got.next_offset, expected.next_offset);
    assert_eq!(got.max_timestamp, expected.max_timestamp);
    // Files write "no first timestamp" as i64::MIN (a first batch's own can be that).
    let first = |meta: &SegmentMeta| meta.first_timestamp.filter(|&first| first != i64::MIN);
    assert_eq!(first(got), first(expected));
    assert_eq!(got.offset_index, expected.offset_index);
    assert_eq!(got.time_index, expected.time_index);
}

// ---- index files ----------------------------------------------------------------------------

/// Bytes of an index file's header; its CRC is at 56..60 (`storage::index`).
const INDEX_HEADER_BYTES: usize = 64;
/// Where a clean-close snapshot's first section (an offset index file) starts:
/// magic, version, last batch position and CRC, then the section's length.
const CLEAN_FIRST_SECTION: usize = 8 + 4 + 8 + 4 + 4;

/// A sealed segment's offset and time index files, and an active segment's clean-close
/// snapshot, as recovery reads them.
pub fn index_file(data: &[u8]) {
    check_index_files(data);
    let fixed = fix_index_crcs(data);
    if fixed != data {
        check_index_files(&fixed);
    }
}

fn check_index_files(bytes: &[u8]) {
    if let Ok((summary, index)) = decode_offset_index(bytes) {
        let encoded = encode_offset_index(&summary, &index);
        assert_same_index_file(&encoded, bytes);
        // A read looks an offset up: it starts inside the segment.
        let wanted = (summary.next_offset.wrapping_sub(summary.base_offset)) as u32;
        let entry = index.lookup(wanted);
        assert!(entry.position == 0 || u64::from(entry.position) < summary.size_bytes);
    }
    if let Ok((summary, index)) = decode_time_index(bytes) {
        let encoded = encode_time_index(&summary, &index);
        assert_same_index_file(&encoded, bytes);
        index.lookup(summary.max_timestamp);
    }
    // The snapshot names the segment it describes; take the base offset it gives.
    let base_offset = bytes
        .get(CLEAN_FIRST_SECTION + 16..CLEAN_FIRST_SECTION + 24)
        .map_or(0, |base| {
            i64::from_le_bytes(base.try_into().expect("8 bytes"))
        });
    if let Some(meta) = decode_clean(base_offset, bytes) {
        assert!(meta.next_offset >= base_offset);
        match meta.last_batch {
            None => assert_eq!((meta.size_bytes, meta.next_offset), (0, base_offset)),
            Some((position, _)) => assert!(position < meta.size_bytes),
        }
        let snapshot = encode_clean(base_offset, &meta, &meta.producers);
        let again = decode_clean(base_offset, &snapshot).expect("a snapshot reads back");
        assert_same_meta(&again, &meta);
        assert_eq!(again.last_batch, meta.last_batch);
    }
}

/// `encoded` is the file `original` begins with, but for the 4 bytes of padding after the
/// CRC, which nothing reads.
fn assert_same_index_file(encoded: &[u8], original: &[u8]) {
    assert!(encoded.len() <= original.len());
    assert_eq!(encoded[..60], original[..60]);
    assert_eq!(
        encoded[INDEX_HEADER_BYTES..],
        original[INDEX_HEADER_BYTES..encoded.len()]
    );
}

/// `bytes` with the CRC of an index file made right (offset or time entries, as the magic
/// says), or a snapshot's: its two index sections' and its own.
fn fix_index_crcs(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.starts_with(b"SPATECLN") {
        let mut position = CLEAN_FIRST_SECTION - 4;
        for _ in 0..2 {
            let Some(length) = out.get(position..position + 4) else {
                break;
            };
            let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
            let start = position + 4;
            let Some(end) = start.checked_add(length).filter(|&end| end <= out.len()) else {
                break;
            };
            fix_index_file_crc(&mut out[start..end]);
            position = end;
        }
        if out.len() >= 4 {
            let body = out.len() - 4;
            let crc = crc32c::crc32c(&out[..body]);
            out[body..].copy_from_slice(&crc.to_le_bytes());
        }
    } else {
        fix_index_file_crc(&mut out);
    }
    out
}

fn fix_index_file_crc(file: &mut [u8]) {
    if file.len() < INDEX_HEADER_BYTES {
        return;
    }
    let entry_bytes = if file.starts_with(b"SPATETIX") { 12 } else { 8 };
    let count = u32::from_le_bytes(file[12..16].try_into().expect("4 bytes")) as usize;
    let end = INDEX_HEADER_BYTES + count * entry_bytes;
    if end > file.len() {
        return;
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&file[..56]), &file[INDEX_HEADER_BYTES..end]);
    file[56..60].copy_from_slice(&crc.to_le_bytes());
}

// ---- topic metadata -------------------------------------------------------------------------

/// The shard counts the fuzzed metadata is spread over.
const FUZZ_SHARDS: [usize; 3] = [1, 3, 16];

/// `metadata.bin` as the broker loads it at start (the bytes as the whole file, and as
/// the archive inside a well-formed file), then used as the broker uses it.
pub fn metadata_archive(data: &[u8]) {
    check_metadata(data);
    let mut file = Vec::with_capacity(24 + data.len());
    file.extend_from_slice(b"SPATEMTA");
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    file.extend_from_slice(&(data.len() as u64).to_le_bytes());
    file.extend_from_slice(data);
    check_metadata(&file);
}

fn check_metadata(bytes: &[u8]) {
    let Ok(loaded) = metadata::decode(bytes) else {
        return;
    };
    assert!(
        loaded
            .topics
            .windows(2)
            .all(|pair| pair[0].name < pair[1].name),
        "topics not sorted and distinct"
    );
    // What a broker does with the metadata it loads: each topic's log config and
    // directory, the partitions per shard.
    for topic in &loaded.topics {
        assert_eq!(loaded.topic(&topic.name), Some(topic));
        topic.log_config();
        let dir = metadata::partition_dir(Path::new("/data"), &topic.name, topic.partitions);
        assert_eq!(dir.parent(), Some(Path::new("/data/topics")));
    }
    for shards in FUZZ_SHARDS {
        metadata::partitions_per_shard(&loaded.topics, shards);
    }
    let saved = metadata::encode(&loaded);
    assert_eq!(metadata::decode(&saved), Ok(loaded));
}

// ---- committed offsets ----------------------------------------------------------------------

/// One record of an offsets log, as the coordinator replays it: `data` is a flags byte
/// (bit 0: no value), a `u16` key length, the key and the value.
pub fn offsets_record(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((length, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(u16::from_be_bytes(*length)).min(rest.len()));
    let key = Bytes::copy_from_slice(key);
    let value = (flags & 1 == 0).then(|| Bytes::copy_from_slice(value));
    let entry = Entry::decode(key.clone(), value.clone());
    if let Ok(entry) = &entry {
        let (again_key, again_value) = entry.key_value();
        assert_eq!(again_key.freeze(), key, "the key re-encodes to other bytes");
        assert_eq!(again_value.map(BytesMut::freeze), value);
    }
    // In a batch of its own in the log, replayed from its start.
    let mut builder = BatchBuilder::new();
    builder.push(0, Some(&key), value.as_deref(), &[]);
    let base_offset = i64::from(flags >> 1);
    let batch = builder.build(base_offset);
    let mut groups: BTreeMap<String, GroupOffsets> = BTreeMap::new();
    let mut offset = 0;
    offsets::replay_batches(&batch, &mut offset, &mut groups, Path::new("fuzz"))
        .expect("a valid batch replays");
    assert_eq!(offset, base_offset + 1);
    let mut expected = BTreeMap::new();
    if let Ok(entry) = entry {
        entry.apply(&mut expected);
    }
    assert_eq!(groups, expected);
    // Replayed from past its record, it changes nothing.
    let mut later: BTreeMap<String, GroupOffsets> = BTreeMap::new();
    let mut offset = base_offset + 1;
    offsets::replay_batches(&batch, &mut offset, &mut later, Path::new("fuzz"))
        .expect("a valid batch replays");
    assert!(later.is_empty());
}

// ---- Kafka protocol -------------------------------------------------------------------------

/// A frame (without its length) of the Kafka door, decoded as `server::kafka` decodes it,
/// with the consumer-protocol bytes it carries; and the same bytes as an answer to Spate's
/// Kafka client, for the API and version its first four bytes name.
pub fn kafka_request(data: &[u8]) {
    let frame = Bytes::copy_from_slice(data);
    let peeked = kafka::peek_header(&frame);
    if let Ok((header, body)) = kafka::decode_header(frame.clone()) {
        assert_eq!(
            peeked,
            Ok((header.api_key, header.api_version, header.correlation_id))
        );
        if let Ok((request, entries)) = kafka::decode_request(&header, body) {
            assert!(
                entries <= REQUEST_ENTRIES_MAX,
                "more entries than the limit"
            );
            assert_eq!(request.api_key(), header.api_key);
            kafka_round_trip(&request, header.api_version);
            kafka_group_payloads(&request);
        }
    }
    kafka_response(&frame);
}

/// What Spate's Kafka client sends decodes back the same, but for what it never sends.
fn kafka_round_trip(request: &kafka::KafkaRequest, version: i16) {
    use kafka::KafkaRequest as K;
    let mut expected = request.clone();
    match &mut expected {
        K::CreateTopics(create) => create.topics.iter_mut().for_each(|t| t.assignments = 0),
        K::CreatePartitions(grow) => grow.topics.iter_mut().for_each(|t| t.assignments = 0),
        K::ApiVersions(_)
        | K::Metadata(_)
        | K::Produce(_)
        | K::Fetch(_)
        | K::ListOffsets(_)
        | K::InitProducerId(_)
        | K::FindCoordinator(_)
        | K::DescribeGroups(_)
        | K::DeleteGroups(_)
        | K::ListGroups
        | K::DescribeCluster(_) => {}
        // Spate's client does not send these.
        _ => return,
    }
    let frame = kafka::encode_request(request, version, 7, "fuzz").freeze();
    let (header, body) = kafka::decode_header(frame.slice(4..)).expect("an encoded header decodes");
    let (again, _) = kafka::decode_request(&header, body).expect("an encoded request decodes");
    assert_eq!(again, expected);
}

/// The consumer-protocol subscriptions and assignments a group request carries, which
/// the broker reads.
fn kafka_group_payloads(request: &kafka::KafkaRequest) {
    use kafka::consumer::{decode_assignment, decode_subscription};
    match request {
        kafka::KafkaRequest::JoinGroup(join) => {
            for (_, metadata) in &join.protocols {
                let _ = decode_subscription(metadata.clone());
            }
        }
        kafka::KafkaRequest::SyncGroup(sync) => {
            for (_, assignment) in &sync.assignments {
                if let Ok(assigned) = decode_assignment(assignment.clone()) {
                    let encoded = kafka::consumer::encode_assignment(&assigned);
                    assert_eq!(decode_assignment(encoded), Ok(assigned));
                }
            }
        }
        _ => {}
    }
}

fn kafka_response(frame: &Bytes) {
    let Ok((api_key, version, _)) = kafka::peek_header(frame) else {
        return;
    };
    let body = frame.slice(8..);
    let _ = match api_key {
        kafka::api::API_VERSIONS => kafka::decode_api_versions(body).map(drop),
        kafka::api::METADATA => kafka::MetadataResponse::decode(body, version).map(drop),
        kafka::api::PRODUCE => kafka::ProduceResponse::decode(body, version).map(drop),
        kafka::api::FETCH => kafka::FetchResponse::decode(body, version).map(drop),
        kafka::api::LIST_OFFSETS => kafka::ListOffsetsResponse::decode(body, version).map(drop),
        kafka::api::CREATE_TOPICS => kafka::CreateTopicsResponse::decode(body, version).map(drop),
        kafka::api::INIT_PRODUCER_ID => kafka::InitProducerIdResponse::decode(body).map(drop),
        kafka::api::DESCRIBE_CLUSTER => kafka::DescribeClusterResponse::decode(body).map(drop),
        _ => kafka::consumer::decode_subscription(body.clone())
            .map(drop)
            .and(kafka::consumer::decode_assignment(body).map(drop)),
    };
}

// ---- seeds ----------------------------------------------------------------------------------

/// Valid inputs for `target` (a name in `TARGETS`), written with Spate's own encoders: the
/// starting corpus, which `tests/it/fuzz_corpora.rs` also replays.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "native_frame" => native_seeds(),
        "record_batch" => batch_seeds(),
        "segment_recovery" => segment_seeds(),
        "index_file" => index_seeds(),
        "metadata_archive" => metadata_seeds(),
        "offsets_record" => offsets_seeds(),
        "kafka_request" => kafka_seeds(),
        other => panic!("no fuzz target {other}"),
    }
}

fn native_seeds() -> Vec<Vec<u8>> {
    use crate::protocol::*;
    let batch = sample_batch(0, crate::record::Compression::None);
    let requests = vec![
        Request::ApiVersions(ApiVersionsRequest {
            client_id: "spate-fuzz".into(),
        }),
        Request::Metadata(MetadataRequest {
            topics: vec!["orders".into(), "clicks".into()],
        }),
        Request::CreateTopics(CreateTopicsRequest {
            topics: vec![NewTopic {
                name: "orders".into(),
                partitions: 3,
                configs: vec![("retention.ms".into(), "1000".into())],
                replication_factor: 2,
            }],
        }),
        Request::Produce(ProduceRequest {
            acks: Acks::All,
            timeout_ms: 1000,
            topics: vec![ProduceTopic {
                name: "orders".into(),
                partitions: vec![ProducePartition {
                    partition: 1,
                    records: batch,
                }],
            }],
        }),
        Request::Fetch(FetchRequest {
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            topics: vec![FetchTopic {
                name: "orders".into(),
                partitions: vec![FetchPartition {
                    partition: 0,
                    offset: 42,
                    max_bytes: 1 << 16,
                }],
            }],
        }),
        Request::JoinGroup(JoinGroupRequest {
            group_id: "readers".into(),
            member_id: String::new(),
            client_id: "spate-fuzz".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            topics: vec!["orders".into()],
            assignors: vec!["range".into(), "sticky".into()],
        }),
        Request::OffsetCommit(OffsetCommitRequest {
            group_id: "readers".into(),
            generation: 3,
            member_id: "m-1".into(),
            topics: vec![OffsetCommitTopic {
                name: "orders".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 0,
                    offset: 17,
                    metadata: "note".into(),
                }],
            }],
        }),
        Request::ReplicaFetch(ReplicaFetchRequest {
            replica: 2,
            max_wait_ms: 500,
            max_bytes: 1 << 20,
            partitions: vec![ReplicaFetchPartition {
                topic: "orders".into(),
                partition: 0,
                leader_epoch: 4,
                fetch_offset: 100,
                last_fetched_epoch: 3,
            }],
        }),
        Request::DescribeGroup(GroupIdRequest {
            group_id: "readers".into(),
        }),
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .map(|request| request.encode(9).to_vec())
        .collect();
    // Two frames back to back, as a pipelining client sends them.
    seeds.push([seeds[0].clone(), seeds[1].clone()].concat());
    // Answers: the correlation id names the request kind they answer.
    let answers = [
        (
            ApiKey::Produce,
            Response::Produce(ProduceResponse {
                topics: vec![ProduceTopicResponse {
                    name: "orders".into(),
                    partitions: vec![ProducePartitionResponse {
                        partition: 1,
                        status: Status::ok(),
                        base_offset: 10,
                        log_end_offset: 12,
                    }],
                }],
            }),
        ),
        (
            ApiKey::Fetch,
            Response::Fetch(FetchResponse {
                topics: vec![FetchTopicResponse {
                    name: "orders".into(),
                    partitions: vec![FetchPartitionResponse {
                        partition: 0,
                        status: Status::ok(),
                        high_watermark: 3,
                        log_start_offset: 0,
                        records: sample_batch(0, crate::record::Compression::None),
                    }],
                }],
            }),
        ),
        (
            ApiKey::Metadata,
            Response::Failed(Status::error(ErrorCode::NotOwner, "not here")),
        ),
    ];
    for (api_key, response) in answers {
        seeds.push(response.encode(api_key as u32).to_vec());
    }
    seeds
}

/// A batch of three records (keys, values, a header, a null value).
fn sample_batch(base_offset: i64, codec: crate::record::Compression) -> Bytes {
    let mut builder = BatchBuilder::new();
    let header = HeaderRef {
        key: b"trace",
        value: Some(b"abc"),
    };
    builder.push(
        1_700_000_000_000,
        Some(b"k1"),
        Some(b"first value"),
        &[header],
    );
    builder.push(1_700_000_000_005, None, Some(b"second"), &[]);
    builder.push(1_700_000_000_002, Some(b"k3"), None, &[]);
    builder.build_compressed(base_offset, codec)
}

fn batch_seeds() -> Vec<Vec<u8>> {
    use crate::record::Compression;
    let mut seeds: Vec<Vec<u8>> = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .map(|codec| sample_batch(0, codec).to_vec())
    .collect();
    let mut idempotent = sample_batch(5, Compression::None).to_vec();
    crate::record::set_producer(&mut idempotent, 7, 0, 3);
    seeds.push([seeds[0].clone(), idempotent].concat());
    // Edge values: the base offset (not covered by the CRC, any value) at the top.
    seeds.push(sample_batch(i64::MAX - 1, Compression::None).to_vec());
    seeds
}

/// Three batches from `base_offset` and the zeros of the padding after them.
fn sample_segment(base_offset: i64) -> Vec<u8> {
    let mut segment = Vec::new();
    let mut offset = base_offset;
    for codec in [
        crate::record::Compression::None,
        crate::record::Compression::Lz4,
        crate::record::Compression::None,
    ] {
        let batch = sample_batch(offset, codec);
        offset = BatchHeader::parse(&batch).expect("a batch").next_offset();
        segment.extend_from_slice(&batch);
    }
    segment
}

fn segment_seeds() -> Vec<Vec<u8>> {
    let whole = sample_segment(0);
    let mut padded = sample_segment(1000);
    padded.resize(padded.len() + 300, 0);
    let torn = whole[..whole.len() - 20].to_vec();
    vec![whole, padded, torn]
}

fn index_seeds() -> Vec<Vec<u8>> {
    let base_offset = 1000;
    let segment = sample_segment(base_offset);
    let (meta, _) = scan_bytes(&segment, base_offset, None, FUZZ_INDEX_INTERVAL_BYTES);
    let summary = summary_of(base_offset, &meta);
    vec![
        encode_offset_index(&summary, &meta.offset_index),
        encode_time_index(&summary, &meta.time_index),
        encode_clean(base_offset, &meta, &meta.producers),
    ]
}

fn metadata_seeds() -> Vec<Vec<u8>> {
    let mut metadata = ClusterMetadata::default();
    for (name, partitions, configs) in [
        (
            "orders",
            6,
            vec![("retention.ms", "3600000"), ("flush.ms", "0")],
        ),
        ("clicks.v2", 1, vec![]),
        ("__consumer_offsets", 16, vec![("segment.bytes", "8388608")]),
    ] {
        let topic = crate::protocol::NewTopic {
            name: name.into(),
            partitions,
            configs: configs
                .into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
            replication_factor: 1,
        };
        metadata.create_topic(&topic).expect("a valid topic");
    }
    let file = metadata::encode(&metadata);
    // The whole file, and the archive alone (which the target wraps in a file).
    vec![file[24..].to_vec(), file]
}

fn offsets_seeds() -> Vec<Vec<u8>> {
    let entries = [
        Entry::Offset {
            group: "readers".into(),
            topic: "orders".into(),
            partition: 3,
            committed: offsets::Committed {
                offset: 42,
                metadata: "note".into(),
                commit_ms: 1_700_000_000_000,
            },
        },
        Entry::OffsetDeleted {
            group: "readers".into(),
            topic: "orders".into(),
            partition: 3,
        },
        Entry::GroupDeleted {
            group: "readers".into(),
        },
    ];
    entries
        .iter()
        .map(|entry| {
            let (key, value) = entry.key_value();
            let mut seed = vec![u8::from(value.is_none()) | 8];
            seed.extend_from_slice(&(key.len() as u16).to_be_bytes());
            seed.extend_from_slice(&key);
            seed.extend_from_slice(value.as_deref().unwrap_or_default());
            seed
        })
        .collect()
}

fn kafka_seeds() -> Vec<Vec<u8>> {
    use bytes::BufMut;
    use kafka::*;
    let batch = sample_batch(0, crate::record::Compression::None);
    let requests = [
        (
            KafkaRequest::ApiVersions(ApiVersionsRequest {
                client_software_name: "spate".into(),
                client_software_version: "0.1".into(),
            }),
            3,
        ),
        (
            KafkaRequest::Metadata(MetadataRequest {
                topics: Some(vec!["orders".into()]),
                allow_auto_topic_creation: false,
            }),
            8,
        ),
        (
            KafkaRequest::Produce(ProduceRequest {
                transactional_id: None,
                acks: -1,
                timeout_ms: 30_000,
                topics: vec![ProduceTopic {
                    name: "orders".into(),
                    partitions: vec![ProducePartition {
                        index: 0,
                        records: Some(batch),
                    }],
                }],
            }),
            8,
        ),
        (
            KafkaRequest::Fetch(FetchRequest {
                max_wait_ms: 500,
                min_bytes: 1,
                max_bytes: 1 << 20,
                isolation_level: 0,
                session_id: 0,
                session_epoch: -1,
                topics: vec![FetchTopic {
                    topic: "orders".into(),
                    partitions: vec![FetchPartition {
                        partition: 0,
                        fetch_offset: 42,
                        partition_max_bytes: 1 << 16,
                    }],
                }],
            }),
            11,
        ),
        (
            KafkaRequest::CreateTopics(CreateTopicsRequest {
                topics: vec![CreatableTopic {
                    name: "orders".into(),
                    num_partitions: 3,
                    replication_factor: 1,
                    assignments: 0,
                    configs: vec![("retention.ms".into(), Some("1000".into()))],
                }],
                timeout_ms: 1000,
                validate_only: false,
            }),
            4,
        ),
        (
            KafkaRequest::DescribeCluster(DescribeClusterRequest {
                include_cluster_authorized_operations: false,
            }),
            0,
        ),
    ];
    let mut seeds: Vec<Vec<u8>> = requests
        .iter()
        .map(|(request, version)| encode_request(request, *version, 5, "rdkafka")[4..].to_vec())
        .collect();
    // A JoinGroup v5 and a SyncGroup v3 (what Spate's client never sends), written here.
    let header = |api_key: i16, version: i16| {
        let mut out = BytesMut::new();
        out.put_i16(api_key);
        out.put_i16(version);
        out.put_i32(11);
        wire::put_nullable_string(&mut out, Some("rdkafka"), false);
        out
    };
    let mut join = header(api::JOIN_GROUP, 5);
    wire::put_string(&mut join, "readers", false);
    join.put_i32(10_000);
    join.put_i32(30_000);
    wire::put_string(&mut join, "", false);
    wire::put_nullable_string(&mut join, None, false);
    wire::put_string(&mut join, consumer::CONSUMER, false);
    wire::put_count(&mut join, 1, false);
    wire::put_string(&mut join, "range", false);
    let subscription = consumer::encode_subscription(&["orders".into()]);
    wire::put_bytes(&mut join, &subscription, false);
    seeds.push(join.to_vec());
    let mut sync = header(api::SYNC_GROUP, 3);
    wire::put_string(&mut sync, "readers", false);
    sync.put_i32(1);
    wire::put_string(&mut sync, "m-1", false);
    wire::put_nullable_string(&mut sync, None, false);
    wire::put_count(&mut sync, 1, false);
    wire::put_string(&mut sync, "m-1", false);
    let assignment = consumer::encode_assignment(&[("orders".to_string(), vec![0, 2])].into());
    wire::put_bytes(&mut sync, &assignment, false);
    seeds.push(sync.to_vec());
    seeds
}
