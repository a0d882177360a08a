//! Compression of stored resource JSON.
//!
//! zstd contexts are expensive to create (they dominated an import profile when made per
//! row), so each thread keeps one compressor and one decompressor.

use std::cell::RefCell;

const LEVEL: i32 = 3;

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// zstd-compresses resource JSON (the frame records the content size).
pub(crate) fn compress(json: &str) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        let compressor = match c.as_mut() {
            Some(compressor) => compressor,
            None => c.insert(zstd::bulk::Compressor::new(LEVEL).expect("zstd context")),
        };
        compressor
            .compress(json.as_bytes())
            .expect("compressing into memory cannot fail")
    })
}

/// Decompresses what [`compress`] produced.
pub(crate) fn decompress(blob: &[u8]) -> Result<String, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(blob) {
        Ok(Some(size)) => size as usize,
        // Frames without a recorded size: fall back to streaming.
        _ => {
            let bytes = zstd::stream::decode_all(blob).map_err(|e| e.to_string())?;
            return String::from_utf8(bytes).map_err(|e| e.to_string());
        }
    };
    let bytes = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let decompressor = match d.as_mut() {
            Some(decompressor) => decompressor,
            None => d.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
        };
        decompressor
            .decompress(blob, size)
            .map_err(|e| e.to_string())
    })?;
    String::from_utf8(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let json = r#"{"resourceType":"Patient","id":"a","name":[{"family":"Ünïcödé"}]}"#;
        for _ in 0..3 {
            assert_eq!(decompress(&compress(json)).unwrap(), json);
        }
        assert!(decompress(b"not zstd").is_err());
        assert_eq!(decompress(&compress("")).unwrap(), "");
    }
}
