//! The Confluent wire format: `0x00` magic byte, 4-byte big-endian schema id, Avro binary body.

/// The magic byte every Confluent-framed record starts with.
pub const MAGIC_BYTE: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("record is {0} bytes, shorter than the 5-byte Confluent header")]
    TooShort(usize),
    #[error("first byte is {0:#04x}, not the Confluent magic byte 0x00")]
    BadMagicByte(u8),
}

/// Splits a framed record into its schema id and Avro body.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::TooShort(bytes.len()));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(FrameError::BadMagicByte(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames an Avro body with its schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_body_splits_back_into_id_and_body() {
        let framed = frame(258, &[6, 7]);
        assert_eq!(framed, vec![0, 0, 0, 1, 2, 6, 7]);
        assert_eq!(split(&framed), Ok((258, &[6u8, 7][..])));
    }

    #[test]
    fn short_or_unframed_bytes_are_named_as_such() {
        assert_eq!(split(&[0, 0, 1]), Err(FrameError::TooShort(3)));
        assert_eq!(split(b"{\"json\":1}"), Err(FrameError::BadMagicByte(b'{')));
    }
}
