//! Kafka's variable-length integers: zig-zag encoded, seven bits per byte, low bits first.
//!
//! Decoders treat input as hostile: they never read past the slice and reject encodings
//! longer than the type allows.

use super::BatchError;

/// Appends `value` as a zig-zag varint (at most 5 bytes).
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    let zigzag = ((value << 1) ^ (value >> 31)) as u32;
    put_unsigned(out, u64::from(zigzag));
}

/// Appends `value` as a zig-zag varlong (at most 10 bytes).
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    put_unsigned(out, zigzag);
}

fn put_unsigned(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `put_varint(value)` writes.
pub fn varint_len(value: i32) -> usize {
    unsigned_len(u64::from(((value << 1) ^ (value >> 31)) as u32))
}

/// Bytes `put_varlong(value)` writes.
pub fn varlong_len(value: i64) -> usize {
    unsigned_len(((value << 1) ^ (value >> 63)) as u64)
}

fn unsigned_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads a zig-zag varint from the front of `input`, advancing it.
pub fn get_varint(input: &mut &[u8]) -> Result<i32, BatchError> {
    let raw = get_unsigned(input, 5)?;
    if raw > u64::from(u32::MAX) {
        return Err(BatchError::MalformedRecord("varint exceeds 32 bits"));
    }
    let raw = raw as u32;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zig-zag varlong from the front of `input`, advancing it.
pub fn get_varlong(input: &mut &[u8]) -> Result<i64, BatchError> {
    let raw = get_unsigned(input, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn get_unsigned(input: &mut &[u8], bytes_max: usize) -> Result<u64, BatchError> {
    let mut value: u64 = 0;
    for index in 0..bytes_max {
        let Some(&byte) = input.get(index) else {
            return Err(BatchError::MalformedRecord(
                "varint runs past the end of the batch",
            ));
        };
        let shift = 7 * index as u32;
        let bits = u64::from(byte & 0x7f);
        // The tenth byte of a varlong may only carry the top bit of the value.
        if shift == 63 && bits > 1 {
            return Err(BatchError::MalformedRecord("varlong exceeds 64 bits"));
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            *input = &input[index + 1..];
            return Ok(value);
        }
    }
    Err(BatchError::MalformedRecord(
        "varint longer than its type allows",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trip(value in any::<i32>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            prop_assert_eq!(out.len(), varint_len(value));
            let mut input = out.as_slice();
            prop_assert_eq!(get_varint(&mut input).unwrap(), value);
            prop_assert!(input.is_empty());
        }

        #[test]
        fn varlong_round_trip(value in any::<i64>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            prop_assert_eq!(out.len(), varlong_len(value));
            let mut input = out.as_slice();
            prop_assert_eq!(get_varlong(&mut input).unwrap(), value);
            prop_assert!(input.is_empty());
        }

        #[test]
        fn varint_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let mut input = bytes.as_slice();
            let _ = get_varint(&mut input);
            let mut input = bytes.as_slice();
            let _ = get_varlong(&mut input);
        }
    }

    #[test]
    fn known_encodings() {
        // Values from Kafka's ByteUtils tests: zig-zag maps 0,-1,1,-2 to 0,1,2,3.
        for (value, encoded) in [
            (0, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (-64, vec![0x7f]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, encoded, "value {value}");
        }
        let mut out = Vec::new();
        put_varint(&mut out, 64);
        assert_eq!(out, vec![0x80, 0x01]);
    }

    #[test]
    fn overlong_is_rejected() {
        let mut input: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(get_varint(&mut input).is_err());
        let mut input: &[u8] = &[0x80];
        assert!(get_varint(&mut input).is_err());
    }
}
