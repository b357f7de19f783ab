//! SMBIOS tables and credentials, checked from inside the guest: the guest's /init
//! (`rvmspawn.smbios=1`) prints the DMI identity and the raw bytes of every type 11 structure
//! the kernel found, and the tests decode them and compare byte for byte with what
//! systemd-vmspawn would pass.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult};

const T: &str = "timeout -s KILL 120";
const UUID: &str = "3f6a0e8c-5b7d-4e21-9c44-0d2b7a1e6f55";

fn results() -> &'static BTreeMap<String, BootResult> {
    static RESULTS: OnceLock<BTreeMap<String, BootResult>> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                "credentials",
                &format!(
                    r#"D=$(mktemp -d)
printf 'line one\nline two\n' > "$D/cred.txt"
cd "$D"
{T} "$RVMSPAWN" -q -M credvm --uuid={UUID} --linux="$KERNEL" --initrd="$INITRD" \
    --set-credential=text:hello \
    '--set-credential=bin:a\x00b\nc' \
    --load-credential=file:./cred.txt \
    -s io.systemd.test=raw-string \
    rvmspawn.smbios=1
rc=$?
cd / && rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // Without --uuid the UUID comes from the machine name: the same twice.
                "derived-uuid",
                &format!(
                    r#"{T} "$RVMSPAWN" -q -M samename --linux="$KERNEL" --initrd="$INITRD" rvmspawn.smbios=1 | grep '^RVMSPAWN-DMI-UUID=' | sed 's/^/FIRST-/'
{T} "$RVMSPAWN" -q -M samename --linux="$KERNEL" --initrd="$INITRD" rvmspawn.smbios=1"#
                ),
            )
            .run()
    })
}

fn get(name: &str) -> &'static BootResult {
    results()
        .get(name)
        .unwrap_or_else(|| panic!("boot '{name}' did not run; see the batch output above"))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// Every string of every type 11 structure the guest printed, in order.
fn oem_strings(r: &BootResult) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for line in r.output.lines() {
        let Some(hex) = line.trim_end().strip_prefix("RVMSPAWN-SMBIOS11-RAW=") else {
            continue;
        };
        let raw = unhex(hex);
        assert_eq!(raw[0], 11, "a type 11 structure: {hex}");
        let count = raw[4] as usize;
        let strings: Vec<Vec<u8>> = raw[raw[1] as usize..]
            .split(|b| *b == 0)
            .take(count)
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(strings.len(), count, "{hex}");
        out.extend(strings);
    }
    out
}

#[test]
fn credentials_arrive_byte_exact_in_vmspawn_format() {
    let r = get("credentials");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    assert_eq!(r.count_lines("RVMSPAWN-SMBIOS-DONE"), 1, "{}", r.output);
    let strings = oem_strings(r);
    let want: [&[u8]; 4] = [
        // base64("hello")
        b"io.systemd.credential.binary:text=aGVsbG8=",
        // base64("a\0b\nc"): the NUL and the newline survive.
        b"io.systemd.credential.binary:bin=YQBiCmM=",
        // base64("line one\nline two\n"), read relative to the working directory.
        b"io.systemd.credential.binary:file=bGluZSBvbmUKbGluZSB0d28K",
        b"io.systemd.test=raw-string",
    ];
    assert_eq!(
        strings,
        want.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
        "{}",
        r.output
    );
}

#[test]
fn identity_is_the_machine_name_and_uuid() {
    let r = get("credentials");
    assert_eq!(r.value("RVMSPAWN-DMI-PRODUCT"), Some("rvmspawn"));
    assert_eq!(r.value("RVMSPAWN-DMI-SERIAL"), Some("credvm"));
    assert_eq!(r.value("RVMSPAWN-DMI-UUID"), Some(UUID));
}

#[test]
fn uuid_without_uuid_option_is_stable_per_name() {
    let r = get("derived-uuid");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let first = r.value("FIRST-RVMSPAWN-DMI-UUID").expect("first boot's UUID");
    let second = r.value("RVMSPAWN-DMI-UUID").expect("second boot's UUID");
    assert_eq!(first, second);
    assert_eq!(first.len(), 36, "{first}");
    assert_ne!(first, "00000000-0000-0000-0000-000000000000");
    // No credentials, no type 11 strings.
    assert!(oem_strings(r).is_empty(), "{}", r.output);
}
