//! The GPT parser behind `root=PARTUUID=` discovery, fed arbitrary bytes as a disk image.
//!
//! The first byte picks the mode: even, the rest is the image as it is; odd, the CRC-32s of any
//! GPT header (and of its partition entry array) found in the rest are fixed up first. Random
//! bytes almost never carry a right checksum, so without the fix-up the fuzzer would stop at the
//! header check and never reach the entry array and partition selection behind it.

#![no_main]

use boot::gpt::{RootArg, crc32, discover_root_in};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    let result = if mode & 1 == 0 {
        discover_root_in(image)
    } else {
        let mut image = image.to_vec();
        fix_checksums(&mut image);
        discover_root_in(image.as_slice())
    };
    if let Ok(found) = result {
        let uuid = found.uuid();
        assert_eq!(uuid.len(), 36, "{uuid}");
        let well_formed = uuid.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
        });
        assert!(well_formed, "{uuid}");
        let key = match found {
            RootArg::Root(_) => "root",
            RootArg::Usr(_) => "mount.usr",
        };
        assert_eq!(found.kernel_arg(), format!("{key}=PARTUUID={uuid}"));
    }
});

/// Fixes the checksums of every "EFI PART" header in sector 1 or in the last sector, for every
/// sector size the parser tries.
fn fix_checksums(image: &mut [u8]) {
    let len = image.len();
    for sector in [512, 1024, 2048, 4096] {
        let last = (len / sector).saturating_sub(1) * sector;
        for at in [sector, last] {
            fix_header(image, at, sector);
        }
    }
}

fn fix_header(image: &mut [u8], at: usize, sector: usize) {
    let field = |image: &[u8], offset: usize, width: usize| {
        let mut bytes = [0; 8];
        bytes[..width].copy_from_slice(&image[at + offset..at + offset + width]);
        u64::from_le_bytes(bytes)
    };
    if at == 0 || at + 92 > image.len() || image[at..at + 8] != *b"EFI PART" {
        return;
    }
    // The entry array first: its checksum is part of the header.
    let entries = field(image, 72, 8).checked_mul(sector as u64);
    let array_len = field(image, 80, 4) * field(image, 84, 4);
    if let Some(start) = entries.and_then(|e| usize::try_from(e).ok())
        && array_len <= boot::gpt::MAX_ENTRY_ARRAY
        && let Some(end) = start.checked_add(array_len as usize)
        && end <= image.len()
    {
        let crc = crc32(&image[start..end]);
        image[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    let header_len = (field(image, 12, 4) as usize).clamp(92, sector);
    if at + header_len <= image.len() {
        image[at + 16..at + 20].fill(0);
        let crc = crc32(&image[at..at + header_len]);
        image[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    }
}
