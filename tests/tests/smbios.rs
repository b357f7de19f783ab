//! SMBIOS tables, credentials and UKI direct boot, checked from inside the guest: the guest's
//! /init (`rvmspawn.smbios=1`) prints the DMI identity and the raw bytes of every type 11
//! structure the kernel found, and the tests decode them and compare byte for byte with what
//! systemd-vmspawn would pass. The UKI is built in the test from the same kernel and initramfs
//! with `objcopy` and Debian's systemd-boot stub (`systemd-boot-efi`).

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, Results, UKI_BUILD, oem_strings, rvmspawn_name_uuid};

const T: &str = "timeout -s KILL 120";
const UUID: &str = "3f6a0e8c-5b7d-4e21-9c44-0d2b7a1e6f55";

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        Batch::new()
            .step(
                "credentials",
                format!(
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
                format!(
                    r#"{T} "$RVMSPAWN" -q -M samename --linux="$KERNEL" --initrd="$INITRD" rvmspawn.smbios=1 | grep '^RVMSPAWN-DMI-UUID=' | sed 's/^/FIRST-/'
{T} "$RVMSPAWN" -q -M samename --linux="$KERNEL" --initrd="$INITRD" rvmspawn.smbios=1"#
                ),
            )
            .step(
                // A UKI carries kernel, initrd and command line; ARGS are appended, and also
                // handed over as the stub's and boot loader's SMBIOS strings.
                "uki",
                format!(
                    r#"{UKI_BUILD}
{T} "$RVMSPAWN" -q --linux="$D/uki.efi" rvmspawn.smbios=1 extra=arg
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .step(
                // A UKI cut short (its .initrd runs past the end of the file) is refused.
                "uki-corrupt",
                format!(
                    r#"{UKI_BUILD}
head -c $(( $(stat -c %s "$D/uki.efi") - 65536 )) "$D/uki.efi" > "$D/cut.efi"
{T} "$RVMSPAWN" -q --linux="$D/cut.efi"
rc=$?
rm -rf "$D"
exit $rc"#
                ),
            )
            .run()
    })
}

#[test]
fn credentials_arrive_byte_exact_in_vmspawn_format() {
    let r = results().step("credentials");
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
    let r = results().step("credentials");
    assert_eq!(r.value("RVMSPAWN-DMI-PRODUCT"), Some("rvmspawn"));
    assert_eq!(r.value("RVMSPAWN-DMI-SERIAL"), Some("credvm"));
    assert_eq!(r.value("RVMSPAWN-DMI-UUID"), Some(UUID));
}

#[test]
fn uuid_without_uuid_option_is_derived_from_the_name() {
    let r = results().step("derived-uuid");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    let first = r
        .value("FIRST-RVMSPAWN-DMI-UUID")
        .expect("first boot's UUID");
    let second = r.value("RVMSPAWN-DMI-UUID").expect("second boot's UUID");
    // The documented derivation, computed here, not by rvmspawn's code.
    assert_eq!(first, rvmspawn_name_uuid("samename"), "{}", r.output);
    assert_eq!(second, first);
    // No credentials, no type 11 strings.
    assert!(oem_strings(r).is_empty(), "{}", r.output);
}

#[test]
fn uki_boots_with_its_embedded_cmdline_and_initrd() {
    let r = results().step("uki");
    assert_eq!(r.rc, Some(0), "{}", r.output);
    // The guest's /init ran: it came from the UKI's .initrd (no --initrd was given).
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 1, "{}", r.output);
    let cmdline = r
        .value("RVMSPAWN-CMDLINE")
        .expect("guest printed its cmdline");
    assert!(
        cmdline.contains("rvmspawn.uki=embedded") && cmdline.ends_with("extra=arg"),
        "{cmdline}"
    );
    let strings = oem_strings(r);
    let want: [&[u8]; 2] = [
        b"io.systemd.stub.kernel-cmdline-extra=rvmspawn.smbios=1 extra=arg",
        b"io.systemd.boot.kernel-cmdline-extra=rvmspawn.smbios=1 extra=arg",
    ];
    assert_eq!(
        strings,
        want.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
        "{}",
        r.output
    );
}

#[test]
fn corrupt_uki_is_refused_clearly() {
    let r = results().step("uki-corrupt");
    assert_eq!(r.rc, Some(8), "ENOEXEC:\n{}", r.output);
    assert!(
        r.output.contains("Failed to load unified kernel image"),
        "{}",
        r.output
    );
    assert_eq!(r.count_lines("RVMSPAWN-GUEST-INIT"), 0);
}
