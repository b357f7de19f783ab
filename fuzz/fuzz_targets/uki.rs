//! The Unified Kernel Image (PE/COFF) parser behind `--linux=` with a UKI, fed arbitrary bytes
//! as the file. Seeds: `python3 seeds/uki.py corpus/uki` (small UKIs, a multi-profile one, an
//! EFI-stub bzImage and a PE without `.linux`).
//!
//! Whatever the input, the parser must answer without panicking, and what it reports must hold:
//! every section is non-empty and inside the file, no two overlap, and the command line is
//! what systemd-stub would pass (no leading, trailing or control white space).

#![no_main]

use boot::uki::{UkiError, is_pe, parse_uki, read_text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let pe = is_pe(data);
    match parse_uki(data) {
        Ok(uki) => {
            assert!(pe, "a UKI that is no PE");
            let sections: Vec<_> = uki.sections().collect();
            assert_eq!(sections[0], (".linux", uki.linux));
            for (i, &(name, section)) in sections.iter().enumerate() {
                assert!(section.size > 0, "{name} is empty");
                assert!(
                    section.end() <= data.len() as u64 && section.slice(data).is_some(),
                    "{name} ({section}) is not inside the {} bytes",
                    data.len()
                );
                for &(other, earlier) in &sections[..i] {
                    assert!(
                        section.end() <= earlier.offset || earlier.end() <= section.offset,
                        "{name} ({section}) overlaps {other} ({earlier})"
                    );
                }
                // Reading any reported section as text works or says why; never an I/O error.
                if let Err(e @ UkiError::Io(_)) = read_text(data, section) {
                    panic!("reading {name} from memory failed: {e}");
                }
            }
            let initrds: Vec<_> = uki.initrds().collect();
            let expected: Vec<_> = uki.ucode.into_iter().chain(uki.initrd).collect();
            assert_eq!(initrds, expected);

            let line = &uki.cmdline_text;
            assert!(uki.cmdline.is_some() || line.is_empty());
            assert_eq!(line.trim_matches(' '), line, "{line:?}");
            assert!(
                line.chars()
                    .all(|c| c >= ' ' && c != '\x7f' && u32::from(c) <= 0xffff),
                "{line:?}"
            );
        }
        Err(UkiError::NotUki) => {}
        Err(UkiError::Malformed(what)) => {
            assert!(pe, "malformed but no PE: {what}");
            assert!(!what.is_empty());
        }
        Err(e @ UkiError::Io(_)) => panic!("reading from memory failed: {e}"),
    }
});
