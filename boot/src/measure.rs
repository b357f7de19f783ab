//! What systemd-stub (systemd 257) measures into the TPM before it starts the kernel of a
//! Unified Kernel Image, computed here so that a direct boot of a UKI, which never runs the
//! stub, can make the same PCR extensions (SHA-256 bank only).
//!
//! - PCR 11 (`kernel-boot`): for each section the stub knows, in its fixed order ([`SECTIONS`]),
//!   skipping `.pcrsig` (it signs the result, so it cannot be an input) and sections that are
//!   absent or empty: first the SHA-256 of the section's name with its terminating NUL, then the
//!   SHA-256 of its contents as loaded in memory: `VirtualSize` bytes, the file's raw data cut to
//!   that size or padded with zeros. Sections are picked as the stub picks them for the default
//!   profile (see [`crate::uki`]).
//! - PCR 12 (`kernel-config`): the extra command line handed over as SMBIOS string
//!   `io.systemd.stub.kernel-cmdline-extra=`, as UTF-16LE with its terminating NUL (characters
//!   beyond U+FFFF, which the stub's UCS-2 conversion cannot hold, left out); nothing when it is
//!   empty.
//!
//! Not measured here, because a direct boot has none of it: the firmware's own measurements
//! (PCRs 0-7 and the event log), the stub's image into PCR 4, credentials, system and
//! configuration extensions and add-ons found beside the UKI on an ESP.

use sha2::{Digest, Sha256};

use crate::uki::{ReadAt, UkiError};

/// The PCR the UKI's sections go into.
pub const UKI_PCR: u32 = 11;

/// The PCR the extra command line goes into.
pub const CMDLINE_EXTRA_PCR: u32 = 12;

/// The sections systemd-stub 257 knows, in the order it measures them (`.pcrsig` is skipped).
pub const SECTIONS: [&str; 14] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".ucode", ".splash", ".dtb", ".uname", ".sbat",
    ".pcrsig", ".pcrpkey", ".profile", ".dtbauto", ".hwids",
];

/// The section never measured.
const PCRSIG: &str = ".pcrsig";

/// How much of a section is read at a time.
const CHUNK: usize = 1 << 20;

/// A SHA-256 digest.
pub type Digest256 = [u8; 32];

/// The digests systemd-stub extends PCR 11 with for the UKI `image`, in order: each measured
/// section's name, then its contents. The payloads are read in pieces, never whole.
pub fn uki_events<R: ReadAt + ?Sized>(image: &R) -> Result<Vec<Digest256>, UkiError> {
    let table = crate::uki::read_section_table(image)?;
    let mut events = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    for name in SECTIONS.into_iter().filter(|n| *n != PCRSIG) {
        let Some(section) = table.pick(name) else {
            continue;
        };
        let len = u64::from(section.virtual_size);
        if len == 0 {
            continue;
        }
        let from_file = len.min(section.raw_size.into());
        let start = u64::from(section.raw_offset);
        if start + from_file > table.size {
            return Err(UkiError::Malformed(format!(
                "the {name} section ({from_file:#x} bytes at offset {start:#x}) extends past the \
                 end of the file ({:#x} bytes)",
                table.size
            )));
        }
        let mut name_nul = name.as_bytes().to_vec();
        name_nul.push(0);
        events.push(Sha256::digest(&name_nul).into());
        let mut hash = Sha256::new();
        let mut done = 0;
        while done < from_file {
            // At most CHUNK bytes: fits in usize.
            let n = (from_file - done).min(CHUNK as u64) as usize;
            image.read_exact_at(&mut chunk[..n], start + done)?;
            hash.update(&chunk[..n]);
            done += n as u64;
        }
        chunk.fill(0);
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            hash.update(&chunk[..n]);
            done += n as u64;
        }
        events.push(hash.finalize().into());
    }
    Ok(events)
}

/// The digest systemd-stub extends PCR 12 with for the extra command line `extra`, or `None`
/// when it is empty (the stub then measures nothing).
pub fn cmdline_extra_event(extra: &str) -> Option<Digest256> {
    if extra.is_empty() {
        return None;
    }
    let utf16: Vec<u8> = extra
        .chars()
        .filter_map(|c| u16::try_from(u32::from(c)).ok())
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect();
    Some(Sha256::digest(&utf16).into())
}

/// A PCR's value after extending `pcr` with `digest`: SHA-256 of the two.
pub fn extend(pcr: &Digest256, digest: &Digest256) -> Digest256 {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// A PCR's value after a reset (zeros) and the extensions `events`.
pub fn pcr_value(events: &[Digest256]) -> Digest256 {
    events.iter().fold([0; 32], |pcr, d| extend(&pcr, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const MEASURE: &str = "/lib/systemd/systemd-measure";

    fn hex(d: &Digest256) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn pcr_11_is_what_systemd_measure_predicts() {
        for tool in [STUB, MEASURE, "/usr/bin/objcopy"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install systemd-boot-efi, systemd and binutils"
            );
        }
        let dir =
            Dir(std::env::temp_dir().join(format!("rvmspawn-measure-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir(&dir.0).unwrap();
        let file = |name: &str, contents: &[u8]| {
            let p = dir.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        };
        // Sizes that are not multiples of the file alignment, so the raw data is padded and
        // the measured size (VirtualSize) is less than it.
        let linux = file(
            "linux",
            &(0..70_001u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
        );
        let osrel = file("osrel", b"ID=test\nVERSION_ID=1\n");
        let cmdline = file("cmdline", b"console=ttyS0 quiet");
        let initrd = file("initrd", &[0x5a; 12_345]);
        let uki = dir.0.join("test.efi");
        // Sections after the stub's own, at increasing addresses.
        let mut objcopy = Command::new("objcopy");
        let mut vma = 0x2000_0000u64;
        for (name, path) in [
            (".osrel", &osrel),
            (".cmdline", &cmdline),
            (".linux", &linux),
            (".initrd", &initrd),
        ] {
            objcopy
                .arg("--add-section")
                .arg(format!("{name}={}", path.display()))
                .arg("--change-section-vma")
                .arg(format!("{name}={vma:#x}"));
            vma += 0x100_0000;
        }
        run(objcopy.arg(STUB).arg(&uki));
        // The sections as objcopy reads them back (an independent reader of the same file).
        let dumped = |name: &str| {
            let out = dir.0.join(format!("dump{name}"));
            run(Command::new("objcopy")
                .arg("--dump-section")
                .arg(format!("{name}={}", out.display()))
                .arg(&uki)
                .arg(dir.0.join("scratch.efi")));
            out
        };
        let mut measure = Command::new(MEASURE);
        // An empty phase: the sections alone, without the boot phases of systemd-pcrphase.
        measure
            .arg("calculate")
            .arg("--bank=sha256")
            .arg("--phase=");
        for (switch, name) in [
            ("linux", ".linux"),
            ("osrel", ".osrel"),
            ("cmdline", ".cmdline"),
            ("initrd", ".initrd"),
        ] {
            measure.arg(format!("--{switch}={}", dumped(name).display()));
        }
        let predicted = run(&mut measure);

        let image = std::fs::File::open(&uki).unwrap();
        let events = uki_events(&image).unwrap();
        // .linux, .osrel, .cmdline, .initrd in the stub's order, each a name and a content
        // event, then the stub's own .sbat, which systemd 257's stub measures too but
        // systemd-measure 252 does not know: the value it predicts is the one before .sbat.
        assert_eq!(events.len(), 10);
        assert_eq!(events[0], <[u8; 32]>::from(Sha256::digest(b".linux\0")));
        assert_eq!(events[8], <[u8; 32]>::from(Sha256::digest(b".sbat\0")));
        let line = format!("11:sha256={}", hex(&pcr_value(&events[..8])));
        assert!(
            predicted.lines().any(|l| l == line),
            "systemd-measure: {predicted}\nours: {line}"
        );
    }

    #[test]
    fn the_extra_command_line_is_utf16_with_its_nul() {
        assert_eq!(cmdline_extra_event(""), None);
        let bytes = b"a\0=\0\xe9\0\0\0";
        assert_eq!(
            cmdline_extra_event("a=é"),
            Some(Sha256::digest(bytes).into())
        );
    }
}
