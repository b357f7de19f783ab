//! A bzImage, plain or inside a UKI, is decompressed by rvmspawn and boots through its PVH
//! entry (issue 15): Debian's cloud kernel (LZ4 payload), its generic kernel (XZ payload) and a
//! UKI around the cloud kernel. rvmspawn says at debug level which way the kernel went and
//! whether the cache was used; the guest says it reached /init and with which command line.
//! A second run hits the cache, a cache that cannot be created costs nothing but speed, and
//! `RVMSPAWN_EXTRACT_KERNEL=no` keeps the 64-bit boot protocol.
//!
//! Each run is wrapped in `/usr/bin/time`, whose `RVMSPAWN-HOST-MAXRSS-KB=` line is rvmspawn's
//! peak RSS (printed in the test log for the figures; not asserted here).

use std::sync::OnceLock;

use rvmspawn_tests::{Batch, BootResult, Results, UKI_BUILD, assets};

/// The generic kernel under emulation takes longer than the cloud one.
const T: &str = "timeout -s KILL 240";
const TIME: &str = "/usr/bin/time -f RVMSPAWN-HOST-MAXRSS-KB=%M";

/// One run of `$RVMSPAWN` at debug level with `args`, its output lines prefixed `part: ` and its
/// exit status as `part: RC=`.
fn run(part: &str, env: &str, args: &str) -> String {
    format!(
        r#"{{ {env} SYSTEMD_LOG_LEVEL=debug {T} {TIME} "$RVMSPAWN" -q --initrd="$INITRD" {args}; echo "RC=$?"; }} 2>&1 | sed 's/^/{part}: /'"#
    )
}

fn results() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let generic = assets().join("testhost/vmlinuz");
        Batch::new()
            .step(
                // A fresh cache: the first run extracts and stores, the second hits. The
                // benchmark's guest size, for the RSS figures.
                "lz4",
                format!(
                    "export XDG_CACHE_HOME=$(mktemp -d)\n{}\n{}\nls \"$XDG_CACHE_HOME/rvmspawn\" | sed 's/^/cached: /'\nrm -rf \"$XDG_CACHE_HOME\"",
                    run(
                        "first",
                        "",
                        r#"--qemu-mem=256M --linux="$KERNEL" rvmspawn.test=lz4-first"#
                    ),
                    run(
                        "second",
                        "",
                        r#"--qemu-mem=256M --linux="$KERNEL" rvmspawn.test=lz4-second"#
                    ),
                ),
            )
            .step(
                "xz",
                format!(
                    "export XDG_CACHE_HOME=$(mktemp -d)\n{}\nrm -rf \"$XDG_CACHE_HOME\"",
                    run(
                        "xz",
                        "",
                        // The initramfs's modules are the cloud kernel's: this kernel cannot
                        // load its virtio_console, so its console is the (built-in) UART.
                        &format!(
                            "--console-transport=serial --linux='{}' rvmspawn.test=xz",
                            generic.display()
                        )
                    ),
                ),
            )
            .step(
                "uki",
                format!(
                    "{UKI_BUILD}\nexport XDG_CACHE_HOME=$D/cache\n{}\nrm -rf \"$D\"",
                    run("uki", "", r#"--linux="$D/uki.efi" rvmspawn.test=uki"#),
                ),
            )
            .step(
                // A regular file where the cache directory's parent should be: the cache
                // cannot be created (root can write anywhere, so permissions would not do).
                "unwritable",
                format!(
                    "F=$(mktemp)\n{}\nrm -f \"$F\"",
                    run(
                        "unwritable",
                        r#"XDG_CACHE_HOME="$F""#,
                        r#"--linux="$KERNEL" rvmspawn.test=unwritable"#
                    ),
                ),
            )
            .step(
                "off",
                run(
                    "off",
                    "RVMSPAWN_EXTRACT_KERNEL=no",
                    r#"--linux="$KERNEL" rvmspawn.test=off"#,
                ),
            )
            .step(
                "bad-value",
                r#"RVMSPAWN_EXTRACT_KERNEL=maybe "$RVMSPAWN" -q --linux="$KERNEL""#,
            )
            .run()
    })
}

/// The guest reached /init once, with `word` on its command line after rvmspawn's console
/// argument (the UART for the generic kernel, `hvc0` for the others), and rvmspawn exited 0.
fn assert_reached_init(r: &BootResult, word: &str) {
    let console = if word == "rvmspawn.test=xz" {
        "ttyS0"
    } else {
        "hvc0"
    };
    assert_eq!(
        r.count_lines("RVMSPAWN-GUEST-INIT"),
        1,
        "guest did not reach /init exactly once:\n{}",
        r.output
    );
    let cmdline = r
        .value("RVMSPAWN-CMDLINE")
        .expect("the guest's command line");
    assert!(
        cmdline.starts_with(&format!("console={console} "))
            && cmdline.split(' ').any(|w| w == word),
        "{cmdline}"
    );
    assert_eq!(r.value("RC"), Some("0"), "{}", r.output);
}

/// rvmspawn's debug line about the kernel's way in.
fn kernel_line(r: &BootResult) -> &str {
    r.output
        .lines()
        .find(|l| l.starts_with("Kernel: "))
        .unwrap_or_else(|| panic!("no 'Kernel:' debug line:\n{}", r.output))
}

/// The extracted kernel booted through PVH: rvmspawn said so, and chose the PVH entry.
fn assert_extracted(r: &BootResult, compression: &str, cache: &str) {
    let line = kernel_line(r);
    assert!(
        line.starts_with(&format!(
            "Kernel: bzImage payload ({compression}) extracted to "
        )) && line.ends_with(&format!("{cache}, booting through PVH")),
        "{line}"
    );
    assert_entry(r, "PVH entry at 0x");
}

/// rvmspawn's debug line says the boot CPU starts at the kernel's `entry`.
fn assert_entry(r: &BootResult, entry: &str) {
    assert!(
        r.output
            .lines()
            .any(|l| l.starts_with("Booting ") && l.contains(&format!(" through its {entry}"))),
        "{}",
        r.output
    );
}

#[test]
fn the_cloud_bzimage_boots_through_pvh_and_the_second_run_hits_the_cache() {
    let r = results().step("lz4");
    let first = r.part("first");
    assert_reached_init(&first, "rvmspawn.test=lz4-first");
    assert_extracted(&first, "lz4", "(cache miss, stored)");
    assert!(
        kernel_line(&first).contains("/rvmspawn/vmlinux-v1-"),
        "{}",
        kernel_line(&first)
    );
    let second = r.part("second");
    assert_reached_init(&second, "rvmspawn.test=lz4-second");
    assert_extracted(&second, "lz4", "(cache hit)");
    // The same single entry both times, and the bzImage's digest remembered by its metadata
    // (the asset has not changed for long), so the hit hashed nothing.
    let listed = r.part("cached").output;
    let cached: Vec<_> = listed
        .lines()
        .filter(|l| l.starts_with("vmlinux-"))
        .map(str::to_owned)
        .collect();
    assert_eq!(cached.len(), 1, "{}", r.output);
    assert!(kernel_line(&second).contains(&cached[0]), "{cached:?}");
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("stat-v1-")).count(),
        1,
        "{listed}"
    );
}

#[test]
fn the_generic_xz_bzimage_boots_through_pvh() {
    let r = results().step("xz").part("xz");
    assert_reached_init(&r, "rvmspawn.test=xz");
    assert_extracted(&r, "xz", "(cache miss, stored)");
}

#[test]
fn a_uki_s_kernel_boots_through_pvh_with_the_uki_s_command_line() {
    let r = results().step("uki").part("uki");
    assert_reached_init(&r, "rvmspawn.test=uki");
    let cmdline = r.value("RVMSPAWN-CMDLINE").unwrap();
    assert!(cmdline.contains("rvmspawn.uki=embedded"), "{cmdline}");
    assert_extracted(&r, "lz4", "(cache miss, stored)");
}

#[test]
fn an_unwritable_cache_only_costs_speed() {
    let r = results().step("unwritable").part("unwritable");
    assert_reached_init(&r, "rvmspawn.test=unwritable");
    let line = kernel_line(&r);
    assert!(
        line.starts_with("Kernel: bzImage payload (lz4) extracted to memory (not cached: ")
            && line.ends_with("booting through PVH"),
        "{line}"
    );
}

#[test]
fn extraction_off_boots_the_bzimage_through_the_64_bit_protocol() {
    let r = results().step("off").part("off");
    assert_reached_init(&r, "rvmspawn.test=off");
    assert_eq!(
        kernel_line(&r),
        "Kernel: booting the bzImage through the 64-bit boot protocol: extraction is off (RVMSPAWN_EXTRACT_KERNEL=no)"
    );
    assert_entry(&r, "64-bit Linux entry");
}

#[test]
fn a_bad_extract_kernel_value_is_refused_naming_it() {
    let r = results().step("bad-value");
    assert_eq!(r.rc, Some(libc::EINVAL), "{}", r.output);
    assert!(
        r.output
            .contains("Failed to parse $RVMSPAWN_EXTRACT_KERNEL value 'maybe': expected a boolean"),
        "{}",
        r.output
    );
}
