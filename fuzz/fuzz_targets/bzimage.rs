//! The bzImage payload parser and decompressors behind `--linux=` with a bzImage (or a UKI's
//! `.linux`), fed arbitrary bytes as the file. Seeds: `python3 seeds/bzimage.py corpus/bzimage`
//! (small bzImages around an ELF with a PVH note, one per compression Python can write).
//!
//! Whatever the input, nothing panics, and what is reported holds: the payload lies inside the
//! file, its decompressed size is within the limit, a decompression that succeeds wrote exactly
//! that many bytes, and a PVH entry is only found in an ELF64. The ELF note parser also gets
//! the raw input.

#![no_main]

use std::io::{Cursor, Write};

use boot::x86_64::extract::{MAX_EXTRACTED, decompress, find_payload, pvh_entry};
use libfuzzer_sys::fuzz_target;

/// Output past this is counted, not kept (the limit allows 1 GiB; libFuzzer's does not).
const KEEP: u64 = 16 << 20;

/// Keeps the first [`KEEP`] bytes and counts the rest.
struct Sink {
    kept: Vec<u8>,
    total: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = KEEP.saturating_sub(self.kept.len() as u64) as usize;
        self.kept.extend_from_slice(&buf[..buf.len().min(room)]);
        self.total += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(entry) = pvh_entry(&mut Cursor::new(data), len) {
        assert_eq!(&data[..4], b"\x7fELF", "a PVH entry {entry:#x} in no ELF");
    }
    let Ok(payload) = find_payload(&mut Cursor::new(data), len) else {
        return;
    };
    assert!(
        payload.offset + payload.len <= len,
        "{payload:?} outside {len} bytes"
    );
    assert!(
        payload.size > 0 && payload.size <= MAX_EXTRACTED,
        "{payload:?}"
    );
    let input = &data[payload.offset as usize..];
    let mut out = Sink {
        kept: Vec::new(),
        total: 0,
    };
    if decompress(&payload, input, &mut out).is_ok() {
        assert_eq!(out.total, payload.size, "{payload:?}");
        if out.total <= KEEP {
            let _ = pvh_entry(&mut Cursor::new(&out.kept), out.total);
        }
    }
});
